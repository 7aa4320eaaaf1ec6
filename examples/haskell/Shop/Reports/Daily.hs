-- | The end-of-day report: invoices, rejections, sales and reorders.
module Shop.Reports.Daily
  ( Section (..)
  , ReportConfig (..)
  , Report
  , dailyReport
  , renderReport
  ) where

import Shop.Core.Book (Catalog)
import Shop.Core.Pretty (Pretty (..))
import Shop.Inventory.Fulfilment (fulfilled, processOrders, rejected)
import Shop.Inventory.Order (Order)
import Shop.Inventory.Pricing (HasTotal (..), PricedOrder (..))
import Shop.Inventory.Restock (reorderPlan)
import Shop.Inventory.Stock (Stock)
import Shop.Reports.Invoice (invoiceLine, rejectionLine)
import Shop.Reports.Layout (heading)
import Shop.Reports.Sales (salesByCategory)
import Shop.Reports.StockReport (reorderLines)

data Section = Section
  { sectionTitle :: String
  , sectionBody :: [String]
  }

data ReportConfig = ReportConfig
  { reportTitle :: String
  , reorderThreshold :: Int
  , reorderTarget :: Int
  }

-- | Header lines, sections, and footer lines.
data Report = Report [String] [Section] [String]

dailyReport :: ReportConfig -> Catalog -> Stock -> [Order] -> Report
dailyReport cfg catalog stock orders =
  Report
    [ "== " ++ reportTitle cfg ++ " =="
    , "Orders: " ++ show (length orders) ++ " received, "
        ++ show (length done) ++ " fulfilled, "
        ++ show (length failed) ++ " rejected"
    ]
    [ Section "Invoices" (map invoiceLine done)
    , Section "Rejected" (map rejectionLine failed)
    , Section "Sales by category" (map pretty (salesByCategory done))
    , Section "Reorder" (reorderLines plan)
    ]
    [ "Revenue: " ++ pretty (total done) ++ " after "
        ++ pretty (mconcat (map poDiscountAmount done)) ++ " of discounts"
    ]
  where
    (closingStock, outcomes) = processOrders catalog stock orders
    done = fulfilled outcomes
    failed = rejected outcomes
    plan =
      reorderPlan (reorderThreshold cfg) (reorderTarget cfg) catalog closingStock

renderReport :: Report -> String
renderReport (Report header sections footer) =
  unlines (header ++ concatMap renderSection sections ++ footer)
  where
    renderSection s = heading (sectionTitle s) : sectionBody s
