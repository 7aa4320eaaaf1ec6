-- | The worker's file descriptors: the protocol keeps a private copy of the original
-- stdout, fd 1 and fd 2 are pointed elsewhere, and each compile's output (GHC's own
-- messages, formatted by GHC, and those of the C compiler and assembler it runs) is
-- captured at the file-descriptor level into a file and read back for the response.
module Capture
  ( protectStdout
  , captureOutput
  ) where

import Control.Exception (bracket, finally)
import qualified Data.ByteString as B
import qualified Data.Text as T
import qualified Data.Text.Encoding as TE
import qualified Data.Text.Encoding.Error as TE
import System.IO
import System.Posix.IO
  ( OpenMode (WriteOnly)
  , closeFd
  , defaultFileFlags
  , dup
  , dupTo
  , fdToHandle
  , openFd
  , stdError
  , stdOutput
  , trunc
  )

-- | Returns a handle on the original stdout for protocol messages, and makes fd 1 a
-- copy of fd 2, so nothing else the process writes can corrupt the protocol stream.
protectStdout :: IO Handle
protectStdout = do
  hFlush stdout
  protocolFd <- dup stdOutput
  _ <- dupTo stdError stdOutput
  h <- fdToHandle protocolFd
  hSetBinaryMode h True
  hSetBuffering h (BlockBuffering Nothing)
  return h

-- | Runs the action with fd 1 and fd 2 redirected into the file at @path@, then puts
-- them back and returns what was written (decoded as UTF-8).
captureOutput :: FilePath -> IO a -> IO (a, String)
captureOutput path action = do
  fd <- openFd path WriteOnly (Just 0o600) defaultFileFlags {trunc = True}
  result <-
    bracket (dup stdError) (\saved -> restore saved `finally` closeFd saved) $ \_ -> do
      flushAll
      _ <- dupTo fd stdError
      _ <- dupTo fd stdOutput
      closeFd fd
      action `finally` flushAll
  bytes <- B.readFile path
  return (result, T.unpack (TE.decodeUtf8With TE.lenientDecode bytes))
  where
    flushAll = hFlush stdout >> hFlush stderr
    restore saved = do
      _ <- dupTo saved stdError
      _ <- dupTo saved stdOutput
      return ()
