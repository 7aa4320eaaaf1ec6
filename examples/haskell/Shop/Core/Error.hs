-- | Everything that can go wrong while handling an order.
module Shop.Core.Error
  ( ShopError (..)
  ) where

import Shop.Core.Pretty (Pretty (..))
import Shop.Core.Sku (Sku)

data ShopError
  = UnknownSku Sku
  | InvalidQuantity Sku Int
  | InsufficientStock Sku Int Int
  | UnknownCoupon String
  | EmptyOrder
  deriving (Eq, Show)

instance Pretty ShopError where
  pretty err = case err of
    UnknownSku sku -> "unknown SKU " ++ pretty sku
    InvalidQuantity sku n ->
      "invalid quantity " ++ show n ++ " for " ++ pretty sku
    InsufficientStock sku wanted available ->
      "insufficient stock for " ++ pretty sku ++ " (requested "
        ++ show wanted ++ ", available " ++ show available ++ ")"
    UnknownCoupon code -> "unknown coupon " ++ show code
    EmptyOrder -> "order has no lines"
