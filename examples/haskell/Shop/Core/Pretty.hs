-- | A tiny class for human-readable rendering of shop values.
module Shop.Core.Pretty
  ( Pretty (..)
  ) where

import Data.List (intercalate)
import Shop.Core.Money (Money, formatMoney)
import Shop.Core.Sku (Sku, skuText)

class Pretty a where
  pretty :: a -> String

  prettyList :: [a] -> String
  prettyList = intercalate ", " . map pretty

instance Pretty Money where
  pretty = formatMoney

instance Pretty Sku where
  pretty = skuText

instance Pretty a => Pretty (Maybe a) where
  pretty Nothing = "-"
  pretty (Just x) = pretty x
