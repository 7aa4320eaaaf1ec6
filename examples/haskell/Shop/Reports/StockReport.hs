-- | The reorder section of the daily report.
module Shop.Reports.StockReport
  ( reorderLines
  ) where

import Shop.Core.Pretty (Pretty (..))
import Shop.Inventory.Restock (Reorder (..))
import Shop.Reports.Layout (Cell (..), row)

reorderLines :: [Reorder] -> [String]
reorderLines [] = ["nothing to reorder"]
reorderLines rs = map line rs
  where
    line r =
      row
        [ L 8 (pretty (reorderSku r))
        , L 11 ("on hand " ++ show (reorderOnHand r))
        , L 0 ("reorder " ++ show (reorderQty r))
        ]
