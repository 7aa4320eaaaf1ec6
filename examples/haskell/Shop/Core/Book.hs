-- | Books, their categories, and the catalogue they are sold from.
module Shop.Core.Book
  ( Category (..)
  , allCategories
  , Book (..)
  , Catalog
  , mkCatalog
  , lookupBook
  , catalogBooks
  ) where

import qualified Data.Map.Strict as Map
import Shop.Core.Error (ShopError (..))
import Shop.Core.Money (Money)
import Shop.Core.Pretty (Pretty (..))
import Shop.Core.Sku (Sku)

data Category = Fiction | Science | Children | Cookery
  deriving (Eq, Ord, Show, Enum, Bounded)

instance Pretty Category where
  pretty = show

allCategories :: [Category]
allCategories = [minBound .. maxBound]

data Book = Book
  { bookSku :: Sku
  , bookTitle :: String
  , bookAuthor :: String
  , bookCategory :: Category
  , bookPrice :: Money
  }
  deriving (Eq, Show)

instance Pretty Book where
  pretty b = show (bookTitle b) ++ " by " ++ bookAuthor b

newtype Catalog = Catalog (Map.Map Sku Book)

mkCatalog :: [Book] -> Catalog
mkCatalog books = Catalog (Map.fromList [(bookSku b, b) | b <- books])

lookupBook :: Sku -> Catalog -> Either ShopError Book
lookupBook sku (Catalog m) = maybe (Left (UnknownSku sku)) Right (Map.lookup sku m)

-- | All books, in SKU order.
catalogBooks :: Catalog -> [Book]
catalogBooks (Catalog m) = Map.elems m
