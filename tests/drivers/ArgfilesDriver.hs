-- | Test driver (never part of the worker's build): expands its command line with the GHC
-- worker's own Argfiles module, in the current directory, as its one-shot mode does, and
-- prints the result as a JSON array of strings; an 'ArgfileError' goes to stderr with exit
-- code 125, as in the worker.
module Main (main) where

import Argfiles (ArgfileError (..), expandArgfiles)
import Control.Exception (try)
import Data.Char (ord)
import Data.List (intercalate)
import System.Environment (getArgs)
import System.Exit (ExitCode (..), exitWith)
import System.IO (hPutStrLn, hSetEncoding, stderr, stdout, utf8)
import Text.Printf (printf)

main :: IO ()
main = do
  hSetEncoding stdout utf8
  hSetEncoding stderr utf8
  result <- try (getArgs >>= expandArgfiles)
  case result of
    Left (ArgfileError message) -> hPutStrLn stderr message >> exitWith (ExitFailure 125)
    Right expanded -> putStrLn ("[" ++ intercalate "," (map quote expanded) ++ "]")

quote :: String -> String
quote s = "\"" ++ concatMap escape s ++ "\""
  where
    escape '"' = "\\\""
    escape '\\' = "\\\\"
    escape c
      | ord c < 0x20 = printf "\\u%04x" (ord c)
      | otherwise = [c]
