-- | Suggested purchase orders for titles that are running low.
module Shop.Inventory.Restock
  ( Reorder (..)
  , reorderPlan
  ) where

import Shop.Core.Book (Book (..), Catalog, catalogBooks)
import Shop.Core.Sku (Sku)
import Shop.Inventory.Stock (Stock, onHand)

data Reorder = Reorder
  { reorderSku :: Sku
  , reorderOnHand :: Int
  , reorderQty :: Int
  }
  deriving (Eq, Show)

-- | Every catalogued title with at most @threshold@ copies on hand is
-- topped back up to @target@ copies.
reorderPlan :: Int -> Int -> Catalog -> Stock -> [Reorder]
reorderPlan threshold target catalog stock =
  [ Reorder sku have (target - have)
  | book <- catalogBooks catalog
  , let sku = bookSku book
  , let have = onHand sku stock
  , have <= threshold
  ]
