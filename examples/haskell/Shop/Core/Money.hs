-- | Monetary amounts, held as a whole number of cents to avoid rounding drift.
module Shop.Core.Money
  ( Money
  , fromCents
  , toCents
  , scaleMoney
  , percentOf
  , minus
  , formatMoney
  ) where

newtype Money = Money Integer
  deriving (Eq, Ord, Show)

instance Semigroup Money where
  Money a <> Money b = Money (a + b)

instance Monoid Money where
  mempty = Money 0

fromCents :: Integer -> Money
fromCents = Money

toCents :: Money -> Integer
toCents (Money c) = c

-- | Price of @n@ identical items.
scaleMoney :: Int -> Money -> Money
scaleMoney n (Money c) = Money (toInteger n * c)

-- | @percentOf p m@ is @p@ percent of @m@, rounded half up to the nearest cent.
percentOf :: Int -> Money -> Money
percentOf p (Money c) = Money ((c * toInteger p + 50) `div` 100)

-- | Subtraction that never goes below zero.
minus :: Money -> Money -> Money
minus (Money a) (Money b) = Money (max 0 (a - b))

formatMoney :: Money -> String
formatMoney (Money c) = sign ++ "$" ++ show whole ++ "." ++ pad2 cents
  where
    sign = if c < 0 then "-" else ""
    (whole, cents) = abs c `divMod` 100
    pad2 n = if n < 10 then '0' : show n else show n
