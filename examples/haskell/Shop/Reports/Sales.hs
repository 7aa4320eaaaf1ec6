-- | Units and gross takings per book category.
module Shop.Reports.Sales
  ( CategorySales (..)
  , salesByCategory
  ) where

import Shop.Core.Book (Book (..), Category, allCategories)
import Shop.Core.Money (Money)
import Shop.Core.Pretty (Pretty (..))
import Shop.Inventory.Pricing (HasTotal (..), PricedLine (..), PricedOrder (..))
import Shop.Reports.Layout (Cell (..), counted, row)

data CategorySales = CategorySales
  { csCategory :: Category
  , csUnits :: Int
  , csGross :: Money
  }

instance Pretty CategorySales where
  pretty cs =
    row
      [ L 9 (pretty (csCategory cs))
      , L 8 (counted (csUnits cs) "unit")
      , R 7 (pretty (csGross cs))
      ]

-- | Sales for every category (including ones with no sales), before
-- order-level discounts.
salesByCategory :: [PricedOrder] -> [CategorySales]
salesByCategory orders =
  [ CategorySales cat (sum (map plQty ls)) (total ls)
  | cat <- allCategories
  , let ls = [l | po <- orders, l <- poLines po, bookCategory (plBook l) == cat]
  ]
