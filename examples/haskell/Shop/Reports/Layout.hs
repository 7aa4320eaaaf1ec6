-- | Fixed-width text layout helpers for the plain-text reports.
module Shop.Reports.Layout
  ( Cell (..)
  , row
  , heading
  , counted
  ) where

-- | A cell of a report row: left- or right-aligned text in a fixed width.
data Cell
  = L Int String
  | R Int String

renderCell :: Cell -> String
renderCell (L width s) = s ++ replicate (width - length s) ' '
renderCell (R width s) = replicate (width - length s) ' ' ++ s

-- | Join cells with single spaces, dropping trailing blanks.
row :: [Cell] -> String
row = stripEnd . unwords . map renderCell
  where
    stripEnd = reverse . dropWhile (== ' ') . reverse

heading :: String -> String
heading title = "-- " ++ title ++ " --"

-- | A count with a crudely pluralised noun: @1 unit@, @3 units@.
counted :: Int -> String -> String
counted 1 noun = "1 " ++ noun
counted n noun = show n ++ " " ++ noun ++ "s"
