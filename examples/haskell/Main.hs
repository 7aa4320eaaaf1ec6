-- | Runs one day of the bookshop and prints the end-of-day report.
module Main (main) where

import Shop.Core.Book (Book (..), Category (..), mkCatalog)
import Shop.Core.Money (fromCents)
import Shop.Core.Sku (Sku, mkSku)
import Shop.Inventory.Order (Order (..), OrderLine (..))
import Shop.Inventory.Stock (mkStock)
import Shop.Reports.Daily (ReportConfig (..), dailyReport, renderReport)

bookData :: [(String, String, String, Category, Integer)]
bookData =
  [ ("FIC-0001", "The Long Harbour", "M. Okafor", Fiction, 1499)
  , ("FIC-0002", "Glass Orchard", "J. Lindqvist", Fiction, 1250)
  , ("SCI-0001", "Small Machines", "R. Patel", Science, 2400)
  , ("SCI-0002", "Counting Stars", "A. Moreau", Science, 1875)
  , ("KID-0001", "Otter Goes Sailing", "P. Brandt", Children, 899)
  , ("COK-0001", "One Pan Suppers", "L. Ferreira", Cookery, 2150)
  ]

stockData :: [(String, Int)]
stockData =
  [ ("FIC-0001", 6)
  , ("FIC-0002", 3)
  , ("SCI-0001", 4)
  , ("SCI-0002", 2)
  , ("KID-0001", 10)
  , ("COK-0001", 1)
  ]

orderData :: [(Int, String, [(String, Int)], Maybe String)]
orderData =
  [ (1001, "alice", [("FIC-0001", 2), ("SCI-0002", 1)], Just "SAVE10")
  , (1002, "bob", [("KID-0001", 3), ("FIC-0002", 1), ("KID-0001", 1)], Just "KIDS25")
  , (1003, "carol", [("SCI-0002", 3)], Nothing)
  , (1004, "dave", [("COK-0001", 1), ("SCI-0001", 2)], Just "FIVEOFF")
  , (1005, "erin", [("FIC-0002", 1)], Just "WELCOME")
  , (1006, "frank", [("POE-0001", 1)], Nothing)
  ]

mkBook :: (String, String, String, Category, Integer) -> Either String Book
mkBook (code, title, author, cat, cents) = do
  sku <- mkSku code
  pure
    Book
      { bookSku = sku
      , bookTitle = title
      , bookAuthor = author
      , bookCategory = cat
      , bookPrice = fromCents cents
      }

skuPair :: (String, a) -> Either String (Sku, a)
skuPair (code, x) = do
  sku <- mkSku code
  pure (sku, x)

mkOrder :: (Int, String, [(String, Int)], Maybe String) -> Either String Order
mkOrder (oid, customer, items, coupon) = do
  pairs <- traverse skuPair items
  pure (Order oid customer [OrderLine s q | (s, q) <- pairs] coupon)

config :: ReportConfig
config =
  ReportConfig
    { reportTitle = "Bookshop end of day"
    , reorderThreshold = 1
    , reorderTarget = 8
    }

buildReport :: Either String String
buildReport = do
  catalog <- mkCatalog <$> traverse mkBook bookData
  stock <- mkStock <$> traverse skuPair stockData
  orders <- traverse mkOrder orderData
  pure (renderReport (dailyReport config catalog stock orders))

main :: IO ()
main = putStr (either (\e -> "setup error: " ++ e ++ "\n") id buildReport)
