-- | @argfile expansion by the project's one rule (docs/argfiles.md), as the runtime does it
-- for the warm path and ghc-argfile for the fallback: @path (not @@..., not a bare @, not a
-- label such as @repo//pkg:target) becomes
-- the file's lines, one argument per line verbatim (LF, CRLF or CR ends a line; empty lines
-- are empty arguments), recursively, paths relative to the working directory;
-- --flagfile= passes through. The file must be UTF-8 without NUL bytes.
module Argfiles (ArgfileError (..), expandArgfiles, isArgfile, splitLines) where

import Control.Exception (Exception, IOException, throwIO, try)
import Control.Monad (unless, when)
import Data.List (isInfixOf)
import qualified Data.ByteString as B
import Data.Maybe (fromMaybe)
import qualified Data.Text as T
import qualified Data.Text.Encoding as TE
import System.Directory (canonicalizePath, doesDirectoryExist, doesPathExist)
import System.IO.Error (ioeGetErrorString)

-- | An argument file that cannot be expanded; the message names it.
newtype ArgfileError = ArgfileError String

instance Show ArgfileError where
  show (ArgfileError message) = message

instance Exception ArgfileError

-- | At most this many argument files nested in one another (the outermost counts).
maxDepth :: Int
maxDepth = 16

-- | True for an argument that is expanded: @path, but not @@..., a bare @ nor a label.
isArgfile :: String -> Bool
isArgfile arg@('@' : c : _) = c /= '@' && not (isRepositoryLabel arg)
isArgfile _ = False

-- | A label of another repository (@repo//pkg:target), which Bazel passes through: //
-- after the @, and none of the line breaks Java's regex . does not match.
isRepositoryLabel :: String -> Bool
isRepositoryLabel arg = "//" `isInfixOf` arg && not (any (`elem` "\n\r\x85\x2028\x2029") arg)

-- | Replaces every @path argument by the lines of that file, nested ones too. Throws
-- 'ArgfileError' for a file that is missing, unreadable, not UTF-8, holds a NUL byte,
-- includes itself or nests too deep.
expandArgfiles :: [String] -> IO [String]
expandArgfiles args
  | any isArgfile args = expandIn [] args
  | otherwise = return args

expandIn :: [FilePath] -> [String] -> IO [String]
expandIn chain = fmap concat . mapM one
  where
    one arg
      | isArgfile arg = file (drop 1 arg)
      | otherwise = return [arg]
    file name = do
      let failWith what = throwIO (ArgfileError ("argument file '" ++ name ++ "' " ++ what))
      exists <- doesPathExist name
      unless exists $ failWith "does not exist"
      resolved <- try (canonicalizePath name)
      real <- either (\e -> failWith ("cannot be read: " ++ ioeGetErrorString (e :: IOException))) return resolved
      when (real `elem` chain) $ failWith ("includes itself (through " ++ show (reverse chain) ++ ")")
      when (length chain >= maxDepth) $ failWith ("nests more than " ++ show maxDepth ++ " argument files")
      isDirectory <- doesDirectoryExist name
      when isDirectory $ failWith "cannot be read: Is a directory"
      read' <- try (B.readFile name)
      bytes <- either (\e -> failWith ("cannot be read: " ++ ioeGetErrorString (e :: IOException))) return read'
      when (B.elem 0 bytes) $ failWith "contains a NUL byte; no argument can hold one"
      text <- either (const (failWith "is not valid UTF-8; arguments are text")) return (TE.decodeUtf8' bytes)
      expandIn (real : chain) (splitLines text)

-- | One argument per line: LF, CRLF or a lone CR ends a line, the last one's is optional.
splitLines :: T.Text -> [String]
splitLines text
  | T.null text = []
  | otherwise = map T.unpack (dropFinalEmpty (go text))
  where
    go s =
      let (line, rest) = T.break (\c -> c == '\n' || c == '\r') s
       in case T.uncons rest of
            Nothing -> [line]
            Just ('\r', after) -> line : go (fromMaybe after (T.stripPrefix (T.pack "\n") after))
            Just (_, after) -> line : go after
    dropFinalEmpty ls = if T.null (last ls) then init ls else ls
