-- | Bazel's persistent-worker wire format, proto flavour: varint-delimited WorkRequest
-- and WorkResponse messages (worker_protocol.proto), decoded and encoded by hand so the
-- worker needs nothing beyond the libraries that ship with GHC.
module WorkProtocol
  ( WorkRequest (..)
  , WorkInput (..)
  , WorkResponse (..)
  , readRequest
  , writeResponse
  , decodeRequest
  , encodeResponse
  ) where

import Control.Monad (when)
import Data.Bits (shiftL, shiftR, (.&.), (.|.))
import qualified Data.ByteString as B
import qualified Data.ByteString.Builder as BB
import qualified Data.ByteString.Lazy as BL
import Data.Int (Int32)
import Data.List (foldl')
import qualified Data.Text as T
import qualified Data.Text.Encoding as TE
import qualified Data.Text.Encoding.Error as TE
import Data.Word (Word64, Word8)
import System.IO (Handle, hFlush)

data WorkInput = WorkInput
  { inputPath :: !String
  , inputDigest :: !B.ByteString
  }
  deriving (Eq, Show)

data WorkRequest = WorkRequest
  { reqArguments :: [String]
  , reqInputs :: [WorkInput]
  , reqId :: !Int32
  , reqCancel :: !Bool
  , reqVerbosity :: !Int32
  , reqSandboxDir :: !String
  }
  deriving (Eq, Show)

data WorkResponse = WorkResponse
  { respExitCode :: !Int32
  , respOutput :: !B.ByteString -- UTF-8
  , respRequestId :: !Int32
  , respWasCancelled :: !Bool
  }
  deriving (Eq, Show)

-- | The largest request read (a request naming 100,000 inputs is about 10 MB).
maxRequestBytes :: Word64
maxRequestBytes = 1024 * 1024 * 1024

emptyRequest :: WorkRequest
emptyRequest = WorkRequest [] [] 0 False 0 ""

-- | Reads one length-delimited request; Nothing at a clean end of input. A truncated
-- or malformed message is an error (the worker cannot resynchronise a byte stream).
readRequest :: Handle -> IO (Maybe WorkRequest)
readRequest h = do
  first <- B.hGet h 1
  if B.null first
    then return Nothing
    else do
      len <- readVarint (B.head first) 0 0
      -- Read whole before it is decoded: a prefix past any plausible request (stray
      -- bytes, a client gone wrong) is refused before it is allocated.
      when (len > maxRequestBytes) $
        fail ("a length prefix of " ++ show len ++ " bytes is not plausible (at most " ++ show maxRequestBytes ++ " are taken)")
      body <- if B.head first == 0x7b then afterBrace else B.hGet h (fromIntegral len)
      if B.length body /= fromIntegral len
        then fail ("truncated WorkRequest: expected " ++ show len ++ " bytes, got " ++ show (B.length body))
        else either (fail . ("malformed WorkRequest: " ++)) (return . Just) (decodeRequest body)
  where
    -- A first byte '{' is also the length prefix of a 123-byte message. JSON (what a
    -- client configured for the JSON protocol sends) goes on with a quote, a tab, a CR, a
    -- space or '}', which no 123-byte WorkRequest starts with (a space is the tag of
    -- `cancel`, which a request opens with only when it has no arguments, inputs or id:
    -- a few bytes): it is refused at once rather than waited on for 123 bytes that may
    -- never come. (A line feed is the tag of `arguments`, the usual first field: '{' and
    -- a line feed are read as proto.)
    afterBrace = do
      second <- B.hGet h 1
      when (not (B.null second) && B.head second `elem` [0x22, 0x09, 0x0d, 0x20, 0x7d]) $
        fail "the request is JSON: this worker speaks the proto flavour of the protocol only (set requires-worker-protocol=proto, or leave the protocol at its default)"
      rest <- B.hGet h 122
      return (second <> rest)
    readVarint :: Word8 -> Int -> Word64 -> IO Word64
    readVarint byte shift acc = do
      let acc' = acc .|. (fromIntegral (byte .&. 0x7f) `shiftL` shift)
      if byte .&. 0x80 == 0
        then return acc'
        else do
          next <- B.hGet h 1
          if B.null next || shift > 56
            then fail "truncated or oversized length prefix"
            else readVarint (B.head next) (shift + 7) acc'

writeResponse :: Handle -> WorkResponse -> IO ()
writeResponse h response = do
  let body = encodeResponse response
  BB.hPutBuilder h (varint (fromIntegral (BL.length body)) <> BB.lazyByteString body)
  hFlush h

-- | A field of a message: its number and its value.
data Field = VarintField !Int !Word64 | BytesField !Int !B.ByteString

decodeRequest :: B.ByteString -> Either String WorkRequest
decodeRequest bytes = inOrder . foldl' apply emptyRequest <$> fields bytes
  where
    -- Repeated fields are gathered in reverse and put in order once (an append per field
    -- was quadratic: 20,000 inputs took seconds to decode).
    inOrder r = r {reqArguments = reverse (reqArguments r), reqInputs = reverse (reqInputs r)}
    apply r (BytesField 1 v) = r {reqArguments = utf8 v : reqArguments r}
    apply r (BytesField 2 v) = r {reqInputs = decodeInput v : reqInputs r}
    apply r (VarintField 3 v) = r {reqId = fromIntegral v}
    apply r (VarintField 4 v) = r {reqCancel = v /= 0}
    apply r (VarintField 5 v) = r {reqVerbosity = fromIntegral v}
    apply r (BytesField 6 v) = r {reqSandboxDir = utf8 v}
    apply r _ = r -- unknown fields are skipped, as proto3 requires
    decodeInput v = case fields v of
      Right fs -> foldl input (WorkInput "" B.empty) fs
      Left _ -> WorkInput "" B.empty
    input i (BytesField 1 v) = i {inputPath = utf8 v}
    input i (BytesField 2 v) = i {inputDigest = v}
    input i _ = i

utf8 :: B.ByteString -> String
utf8 = T.unpack . TE.decodeUtf8With TE.lenientDecode

fields :: B.ByteString -> Either String [Field]
fields bs
  | B.null bs = Right []
  | otherwise = do
      (key, rest) <- getVarint bs
      let number = fromIntegral (key `shiftR` 3)
      (field, rest') <- case key .&. 7 of
        0 -> do
          (v, r) <- getVarint rest
          return (VarintField number v, r)
        1 -> skip 8 rest
        2 -> do
          (n, r) <- getVarint rest
          let len = fromIntegral n
          if B.length r < len
            then Left ("field " ++ show number ++ " runs past the end of the message")
            else return (BytesField number (B.take len r), B.drop len r)
        5 -> skip 4 rest
        t -> Left ("unsupported wire type " ++ show t ++ " for field " ++ show number)
      (field :) <$> fields rest'
  where
    skip n r
      | B.length r < n = Left "fixed-width field runs past the end of the message"
      | otherwise = Right (VarintField 0 0, B.drop n r)

getVarint :: B.ByteString -> Either String (Word64, B.ByteString)
getVarint = go 0 0
  where
    go shift acc bs = case B.uncons bs of
      Nothing -> Left "truncated varint"
      Just (b, rest)
        | shift > 63 -> Left "varint longer than 10 bytes"
        | b .&. 0x80 == 0 -> Right (acc .|. (fromIntegral b `shiftL` shift), rest)
        | otherwise -> go (shift + 7) (acc .|. (fromIntegral (b .&. 0x7f) `shiftL` shift)) rest

encodeResponse :: WorkResponse -> BL.ByteString
encodeResponse (WorkResponse code output rid cancelled) =
  BB.toLazyByteString $
    intField 1 (fromIntegral code)
      <> (if B.null output then mempty else bytesField 2 output)
      <> intField 3 (fromIntegral rid)
      <> (if cancelled then intField 4 1 else mempty)
  where
    -- int32 is encoded as a sign-extended 64-bit varint; zero values are omitted.
    intField _ 0 = mempty
    intField n v = varint (fromIntegral n `shiftL` 3) <> varint (fromIntegral (v :: Int) :: Word64)
    bytesField n v = varint (fromIntegral n `shiftL` 3 .|. 2) <> varint (fromIntegral (B.length v)) <> BB.byteString v

varint :: Word64 -> BB.Builder
varint v
  | v < 0x80 = BB.word8 (fromIntegral v)
  | otherwise = BB.word8 (fromIntegral (v .&. 0x7f) .|. 0x80) <> varint (v `shiftR` 7)
