{-# LANGUAGE CPP #-}

-- | ghc-worker: GHC as a Bazel-protocol persistent worker. With @--persistent_worker@ it
-- reads varint-delimited proto WorkRequests on stdin, compiles each (the arguments of a
-- @ghc -c@ command) in a warm GHC API session and answers on stdout; without it, it
-- compiles its command line once, @argfiles expanded, like @ghc -c@.
module Main (main) where

import Capture (protectStdout)
import Argfiles (expandArgfiles)
import GHC (runGhc)
import GHC.Driver.Monad (liftIO)
import System.Directory (createDirectoryIfMissing, getTemporaryDirectory, removeDirectoryRecursive)
import System.Environment (getArgs, lookupEnv)
import System.Exit (ExitCode (..), exitWith)
import System.FilePath ((</>))
import System.IO
import System.Posix.Process (getProcessID)
import Control.Exception (bracket)
import WarmSession (compile, lastReport, newWorker)
import WorkProtocol

#ifndef GHC_LIBDIR
#define GHC_LIBDIR "/usr/lib/ghc"
#endif

main :: IO ()
main = do
  args <- getArgs
  libdir <- maybe GHC_LIBDIR id <$> lookupEnv "GHC_WORKER_LIBDIR"
  withScratchDirectory $ \scratch ->
    if "--persistent_worker" `elem` args
      then serve libdir scratch (filter (/= "--persistent_worker") args)
      else compileOnce libdir scratch args

-- | A private directory for captured output, removed at exit.
withScratchDirectory :: (FilePath -> IO a) -> IO a
withScratchDirectory = bracket make removeDirectoryRecursive
  where
    make = do
      tmp <- getTemporaryDirectory
      pid <- getProcessID
      let dir = tmp </> ("ghc-worker-" ++ show pid)
      createDirectoryIfMissing True dir
      return dir

compileOnce :: FilePath -> FilePath -> [String] -> IO ()
compileOnce libdir scratch args = do
  expanded <- expandArgfiles args
  (code, output) <- runGhc (Just libdir) $ do
    worker <- newWorker (scratch </> "output")
    compile worker "" expanded []
  hPutStr stderr output
  exitWith (if code == 0 then ExitSuccess else ExitFailure code)

-- | Serves requests one at a time until stdin ends. Startup arguments (after removing
-- @--persistent_worker@) come before every request's own arguments.
serve :: FilePath -> FilePath -> [String] -> IO ()
serve libdir scratch startupArgs = do
  out <- protectStdout
  hSetBinaryMode stdin True
  runGhc (Just libdir) $ do
    worker <- newWorker (scratch </> "output")
    let loop = do
          next <- liftIO (readRequest stdin)
          case next of
            Nothing -> return ()
            Just request
              | reqCancel request -> loop -- one request at a time: it has already been answered
              | otherwise -> do
                  let inputs = [(inputPath i, inputDigest i) | i <- reqInputs request]
                  (code, output) <- compile worker (reqSandboxDir request) (startupArgs ++ reqArguments request) inputs
                  -- Bazel asks for verbosity 10 with --worker_verbose.
                  report <- liftIO (if reqVerbosity request >= 10 then lastReport worker else return "")
                  liftIO (writeResponse out (WorkResponse (fromIntegral code) (output ++ report) (reqId request) False))
                  loop
    loop
