-- | The worker's file descriptors: the protocol keeps a private copy of the original
-- stdout, fd 1 and fd 2 are pointed elsewhere, and each compile's output (GHC's own
-- messages, formatted by GHC, and those of the C compiler and assembler it runs) is
-- captured at the file-descriptor level into a file and read back for the response.
module Capture
  ( protectStdio
  , captureOutput
  , utf8Bytes
  ) where

import Control.Exception (SomeException, bracket, finally, try)
import Data.Bits ((.&.))
import qualified Data.ByteString as B
import qualified Data.ByteString.Char8 as B8
import qualified Data.Text as T
import qualified Data.Text.Encoding as TE
import qualified Data.Text.Encoding.Error as TE
import System.Environment (lookupEnv)
import System.IO
import System.Posix.IO
  ( FdOption (CloseOnExec)
  , OpenMode (ReadOnly, WriteOnly)
  , closeFd
  , defaultFileFlags
  , dup
  , dupTo
  , fdToHandle
  , openFd
  , setFdOption
  , stdError
  , stdInput
  , stdOutput
  , trunc
  )
import Text.Read (readMaybe)

-- | Returns handles on the original stdin and stdout for protocol messages, makes fd 1
-- a copy of fd 2 and fd 0 /dev/null, so nothing else the process writes can corrupt the
-- protocol stream and nothing it runs can read requests. The protocol's own copies are
-- closed on exec: a process GHC runs (the assembler, a cold ghc, what it starts) holds
-- neither pipe, so none can write into the stream or keep it open past the worker's end.
protectStdio :: IO (Handle, Handle)
protectStdio = do
  hFlush stdout
  protocolOut <- dup stdOutput
  _ <- dupTo stdError stdOutput
  protocolIn <- dup stdInput
  devNull <- openFd "/dev/null" ReadOnly Nothing defaultFileFlags
  _ <- dupTo devNull stdInput
  closeFd devNull
  setFdOption protocolOut CloseOnExec True
  setFdOption protocolIn CloseOnExec True
  out <- fdToHandle protocolOut
  hSetBinaryMode out True
  hSetBuffering out (BlockBuffering Nothing)
  input <- fdToHandle protocolIn
  hSetBinaryMode input True
  return (input, out)

-- | The most of a compile's output a response carries (16 MiB; the environment's
-- @GHC_WORKER_MAX_OUTPUT_BYTES@ if it is a number from 1 to 1 GiB): a @-ddump-*@ to
-- stdout of a large module would otherwise be read whole into the worker's memory, then
-- refused by the runtime as too large, the warm worker with it. Past it the output is
-- cut, saying so.
maxOutputBytes :: IO Integer
maxOutputBytes = do
  set <- lookupEnv "GHC_WORKER_MAX_OUTPUT_BYTES"
  return $ case set >>= readMaybe of
    Just n | n > 0 && n <= 1024 * 1024 * 1024 -> n
    _ -> 16 * 1024 * 1024

-- | Runs the action with fd 1 and fd 2 redirected into the file at @path@, then puts
-- them back and returns how the action ended and what was written, as UTF-8 (bytes that
-- are not become U+FFFD): what was printed before an exception (GHC's warnings, say) is
-- kept for the response. Bytes, not a String (some 24 bytes a character), all the way
-- to the response.
captureOutput :: FilePath -> IO a -> IO (Either SomeException a, B.ByteString)
captureOutput path action = do
  fd <- openFd path WriteOnly (Just 0o600) defaultFileFlags {trunc = True}
  result <-
    bracket (dup stdError) (\saved -> restore saved `finally` closeFd saved) $ \_ -> do
      flushAll
      _ <- dupTo fd stdError
      _ <- dupTo fd stdOutput
      closeFd fd
      try action `finally` flushAll
  cap <- maxOutputBytes
  bytes <- withBinaryFile path ReadMode $ \h -> do
    size <- hFileSize h
    -- What is there, up to the cap (hGet sets aside all it is asked for first).
    start <- B.hGet h (fromIntegral (min size cap))
    if size > cap
      then do
        -- Cut before a character the cap fell inside, so that it does not become U+FFFD.
        let kept = validUtf8 (dropPartialCharacter start)
        return (kept <> B8.pack ("\n[ghc-worker: the output was cut here: " ++ show size ++ " bytes in all, of which the first " ++ show (B.length kept) ++ " are above]\n"))
      else return (validUtf8 start)
  return (result, bytes)
  where
    validUtf8 bytes = case TE.decodeUtf8' bytes of
      Right _ -> bytes -- the usual case: kept as it is
      Left _ -> TE.encodeUtf8 (TE.decodeUtf8With TE.lenientDecode bytes)
    flushAll = hFlush stdout >> hFlush stderr
    restore saved = do
      _ <- dupTo saved stdError
      _ <- dupTo saved stdOutput
      return ()

-- | The bytes without the character their end cuts short, if it does: a UTF-8 lead byte
-- among the last three whose sequence runs past the end, and what follows it.
dropPartialCharacter :: B.ByteString -> B.ByteString
dropPartialCharacter bytes =
  case [i | i <- [n - 1, n - 2, n - 3], i >= 0, B.index bytes i .&. 0xC0 /= 0x80] of
    (i : _) | sequenceLength (B.index bytes i) > n - i -> B.take i bytes
    _ -> bytes
  where
    n = B.length bytes
    sequenceLength lead
      | lead >= 0xF0 = 4
      | lead >= 0xE0 = 3
      | lead >= 0xC0 = 2
      | otherwise = 1 :: Int

-- | A message as the UTF-8 bytes a response carries.
utf8Bytes :: String -> B.ByteString
utf8Bytes = TE.encodeUtf8 . T.pack
