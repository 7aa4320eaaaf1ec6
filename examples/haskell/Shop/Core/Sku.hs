-- | Stock keeping units such as @FIC-0001@: three capital letters, a dash,
-- and four digits.
module Shop.Core.Sku
  ( Sku
  , mkSku
  , skuText
  ) where

import Data.Char (isDigit, isUpper)

newtype Sku = Sku String
  deriving (Eq, Ord, Show)

mkSku :: String -> Either String Sku
mkSku s = case break (== '-') s of
  (prefix, '-' : digits)
    | length prefix == 3
    , all isUpper prefix
    , length digits == 4
    , all isDigit digits ->
        Right (Sku s)
  _ -> Left ("malformed SKU " ++ show s)

skuText :: Sku -> String
skuText (Sku s) = s
