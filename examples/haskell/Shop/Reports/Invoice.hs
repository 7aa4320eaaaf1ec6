-- | One-line invoice summaries for fulfilled and rejected orders.
module Shop.Reports.Invoice
  ( invoiceLine
  , rejectionLine
  ) where

import Shop.Core.Error (ShopError)
import Shop.Core.Pretty (Pretty (..))
import Shop.Inventory.Order (Order (..), orderUnits)
import Shop.Inventory.Pricing (HasTotal (..), PricedOrder (..), poSubtotal)
import Shop.Reports.Layout (Cell (..), counted, row)

orderLabel :: Order -> String
orderLabel o = "#" ++ show (orderId o)

invoiceLine :: PricedOrder -> String
invoiceLine po =
  row
    [ L 5 (orderLabel o)
    , L 6 (orderCustomer o)
    , L 8 (counted (orderUnits o) "item")
    , R 7 (pretty (poSubtotal po))
    , L 7 (maybe "-" id (orderCoupon o))
    , R 7 ("-" ++ pretty (poDiscountAmount po))
    , R 7 (pretty (total po))
    ]
  where
    o = poOrder po

rejectionLine :: (Order, ShopError) -> String
rejectionLine (o, err) = orderLabel o ++ " " ++ orderCustomer o ++ ": " ++ pretty err
