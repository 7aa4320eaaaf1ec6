-- | Processing a day's orders against the catalogue and stock.
module Shop.Inventory.Fulfilment
  ( Outcome (..)
  , processOrder
  , processOrders
  , fulfilled
  , rejected
  ) where

import Control.Monad (foldM)
import Data.List (mapAccumL)
import Shop.Core.Book (Catalog)
import Shop.Core.Error (ShopError)
import Shop.Inventory.Order (Order, OrderLine (..), normaliseOrder, orderLines)
import Shop.Inventory.Pricing (PricedOrder, priceOrder)
import Shop.Inventory.Stock (Stock, reserve)

data Outcome
  = Fulfilled PricedOrder
  | Rejected Order ShopError
  deriving (Eq, Show)

-- | Validate, price and reserve stock for one order. A rejected order
-- leaves the stock untouched.
processOrder :: Catalog -> Stock -> Order -> (Stock, Outcome)
processOrder catalog stock order = case attempt of
  Left err -> (stock, Rejected order err)
  Right (newStock, priced) -> (newStock, Fulfilled priced)
  where
    attempt = do
      clean <- normaliseOrder order
      pricedOrder <- priceOrder catalog clean
      remaining <- foldM take1 stock (orderLines clean)
      pure (remaining, pricedOrder)
    take1 s l = reserve (lineSku l) (lineQty l) s

-- | Process orders in arrival order, threading the stock through.
processOrders :: Catalog -> Stock -> [Order] -> (Stock, [Outcome])
processOrders catalog = mapAccumL (processOrder catalog)

fulfilled :: [Outcome] -> [PricedOrder]
fulfilled outcomes = [po | Fulfilled po <- outcomes]

rejected :: [Outcome] -> [(Order, ShopError)]
rejected outcomes = [(o, e) | Rejected o e <- outcomes]
