-- | Stock levels per SKU.
module Shop.Inventory.Stock
  ( Stock
  , mkStock
  , onHand
  , reserve
  , stockLevels
  ) where

import qualified Data.Map.Strict as Map
import Shop.Core.Error (ShopError (..))
import Shop.Core.Sku (Sku)

newtype Stock = Stock (Map.Map Sku Int)
  deriving (Eq, Show)

-- | Build stock levels; repeated SKUs are added together.
mkStock :: [(Sku, Int)] -> Stock
mkStock = Stock . Map.fromListWith (+)

onHand :: Sku -> Stock -> Int
onHand sku (Stock m) = Map.findWithDefault 0 sku m

-- | Take @qty@ units of a SKU out of stock, if there are enough.
reserve :: Sku -> Int -> Stock -> Either ShopError Stock
reserve sku qty stock@(Stock m)
  | qty <= 0 = Left (InvalidQuantity sku qty)
  | available < qty = Left (InsufficientStock sku qty available)
  | otherwise = Right (Stock (Map.insert sku (available - qty) m))
  where
    available = onHand sku stock

stockLevels :: Stock -> [(Sku, Int)]
stockLevels (Stock m) = Map.toAscList m
