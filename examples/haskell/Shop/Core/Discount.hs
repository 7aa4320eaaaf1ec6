-- | Coupon codes and the discounts they grant.
module Shop.Core.Discount
  ( Discount (..)
  , parseCoupon
  , discountAmount
  ) where

import Shop.Core.Book (Category (..))
import Shop.Core.Error (ShopError (..))
import Shop.Core.Money (Money, fromCents, percentOf)
import Shop.Core.Pretty (Pretty (..))

data Discount
  = PercentOff Int
  | AmountOff Money Money -- ^ amount off, minimum spend
  | CategoryPercentOff Category Int
  deriving (Eq, Show)

instance Pretty Discount where
  pretty d = case d of
    PercentOff p -> show p ++ "% off"
    AmountOff amount minSpend ->
      pretty amount ++ " off orders over " ++ pretty minSpend
    CategoryPercentOff cat p -> show p ++ "% off " ++ pretty cat

parseCoupon :: String -> Either ShopError Discount
parseCoupon code = case code of
  "SAVE10" -> Right (PercentOff 10)
  "FIVEOFF" -> Right (AmountOff (fromCents 500) (fromCents 4000))
  "KIDS25" -> Right (CategoryPercentOff Children 25)
  _ -> Left (UnknownCoupon code)

-- | The discount on a basket, given each line's category and line total.
-- Never exceeds the basket subtotal.
discountAmount :: Discount -> [(Category, Money)] -> Money
discountAmount d basket = min subtotal raw
  where
    subtotal = mconcat (map snd basket)
    raw = case d of
      PercentOff p -> percentOf p subtotal
      AmountOff amount minSpend
        | subtotal >= minSpend -> amount
        | otherwise -> mempty
      CategoryPercentOff cat p ->
        percentOf p (mconcat [m | (c, m) <- basket, c == cat])
