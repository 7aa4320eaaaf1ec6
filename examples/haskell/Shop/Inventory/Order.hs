-- | Customer orders as they arrive at the till.
module Shop.Inventory.Order
  ( OrderLine (..)
  , Order (..)
  , orderUnits
  , normaliseOrder
  ) where

import qualified Data.Map.Strict as Map
import Shop.Core.Error (ShopError (..))
import Shop.Core.Sku (Sku)

data OrderLine = OrderLine
  { lineSku :: Sku
  , lineQty :: Int
  }
  deriving (Eq, Show)

data Order = Order
  { orderId :: Int
  , orderCustomer :: String
  , orderLines :: [OrderLine]
  , orderCoupon :: Maybe String
  }
  deriving (Eq, Show)

orderUnits :: Order -> Int
orderUnits = sum . map lineQty . orderLines

-- | Reject empty orders and non-positive quantities, and merge repeated
-- SKUs into a single line (lines end up in SKU order).
normaliseOrder :: Order -> Either ShopError Order
normaliseOrder order
  | null (orderLines order) = Left EmptyOrder
  | otherwise = do
      mapM_ checkLine (orderLines order)
      let merged =
            Map.fromListWith (+) [(lineSku l, lineQty l) | l <- orderLines order]
      pure order {orderLines = [OrderLine s q | (s, q) <- Map.toAscList merged]}
  where
    checkLine l
      | lineQty l <= 0 = Left (InvalidQuantity (lineSku l) (lineQty l))
      | otherwise = Right ()
