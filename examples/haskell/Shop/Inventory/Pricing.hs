-- | Turning an order into money: line totals, coupons and order totals.
module Shop.Inventory.Pricing
  ( HasTotal (..)
  , PricedLine (..)
  , PricedOrder (..)
  , poSubtotal
  , priceOrder
  ) where

import Shop.Core.Book (Book (..), Catalog, lookupBook)
import Shop.Core.Discount (Discount, discountAmount, parseCoupon)
import Shop.Core.Error (ShopError)
import Shop.Core.Money (Money, minus, scaleMoney)
import Shop.Inventory.Order (Order (..), OrderLine (..))

-- | Things that have an amount payable.
class HasTotal a where
  total :: a -> Money

data PricedLine = PricedLine
  { plBook :: Book
  , plQty :: Int
  }
  deriving (Eq, Show)

instance HasTotal PricedLine where
  total l = scaleMoney (plQty l) (bookPrice (plBook l))

data PricedOrder = PricedOrder
  { poOrder :: Order
  , poLines :: [PricedLine]
  , poDiscount :: Maybe Discount
  , poDiscountAmount :: Money
  }
  deriving (Eq, Show)

-- | Total before any discount.
poSubtotal :: PricedOrder -> Money
poSubtotal = total . poLines

instance HasTotal PricedOrder where
  total po = poSubtotal po `minus` poDiscountAmount po

instance HasTotal a => HasTotal [a] where
  total = mconcat . map total

priceOrder :: Catalog -> Order -> Either ShopError PricedOrder
priceOrder catalog order = do
  priced <- traverse priceLine (orderLines order)
  discount <- traverse parseCoupon (orderCoupon order)
  let basket = [(bookCategory (plBook l), total l) | l <- priced]
  pure
    PricedOrder
      { poOrder = order
      , poLines = priced
      , poDiscount = discount
      , poDiscountAmount = maybe mempty (`discountAmount` basket) discount
      }
  where
    priceLine l = do
      book <- lookupBook (lineSku l) catalog
      pure (PricedLine book (lineQty l))
