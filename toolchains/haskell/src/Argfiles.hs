-- | Expansion of @argfile arguments, one argument per line, the way Buck2 writes them and
-- Bazel reads its flagfiles (no quoting: a line is one argument, spaces included).
module Argfiles (expandArgfiles) where

import qualified Data.ByteString as B
import qualified Data.Text as T
import qualified Data.Text.Encoding as TE
import qualified Data.Text.Encoding.Error as TE

-- | Replaces every @path argument by the lines of that file, relative paths resolved by
-- the caller's working directory. Nested @files are expanded too.
expandArgfiles :: [String] -> IO [String]
expandArgfiles = fmap concat . mapM expand
  where
    expand ('@' : path@(_ : _)) = do
      contents <- T.unpack . TE.decodeUtf8With TE.lenientDecode <$> B.readFile path
      expandArgfiles (filter (not . null) (map stripCR (lines contents)))
    expand arg = return [arg]
    stripCR s = if not (null s) && last s == '\r' then init s else s
