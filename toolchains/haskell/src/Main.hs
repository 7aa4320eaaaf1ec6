{-# LANGUAGE CPP #-}

-- | ghc-worker: GHC as a Bazel-protocol persistent worker. With @--persistent_worker@ it
-- reads varint-delimited proto WorkRequests on stdin, compiles each (the arguments of a
-- @ghc -c@ command) in a warm GHC API session and answers on stdout; without it, it
-- compiles its command line once, @argfiles expanded by the project's one rule (module
-- Argfiles, docs/argfiles.md), like @ghc -c@.
module Main (main) where

import Capture (protectStdio, utf8Bytes)
import qualified Data.ByteString as B
import Argfiles (ArgfileError (..), expandArgfiles)
import GHC (runGhc)
import GHC.Driver.Monad (liftIO)
import GHC.Settings.Config (cProjectVersion)
import System.Directory (doesDirectoryExist, getTemporaryDirectory, listDirectory, removeDirectoryRecursive)
import System.IO.Error (isAlreadyExistsError)
import System.Posix.Directory (createDirectory)
import Data.Char (isDigit)
import Data.List (isPrefixOf, isSuffixOf)
import System.Process (readProcess)
import System.Environment (getArgs, lookupEnv)
import System.Exit (ExitCode (..), exitWith)
import System.FilePath ((</>))
import System.IO
import System.Posix.Process (getProcessID)
import Control.Exception (IOException, bracket, handle, try)
import Control.Monad (forM_, void, when)
import WarmSession (compile, lastReport, newWorker)
import WorkProtocol

#ifndef GHC_LIBDIR
#define GHC_LIBDIR "/usr/lib/ghc"
#endif

main :: IO ()
main = do
  -- GHC's messages are written as UTF-8 whatever the locale (a compile's capture is read
  -- back as UTF-8): under LANG=C a warning quoting a non-ASCII name failed the compile.
  hSetEncoding stdout utf8
  hSetEncoding stderr utf8
  args <- getArgs
  libdir <- findLibdir
  withScratchDirectory $ \scratch ->
    if "--persistent_worker" `elem` args
      then serve libdir scratch (filter (/= "--persistent_worker") args)
      else compileOnce libdir scratch args

-- | GHC's libdir: $GHC_WORKER_LIBDIR, else the one the worker was built against, else
-- what @ghc --print-libdir@ says (a worker built without GHC_LIBDIR defined) -- each
-- taken only if it is the libdir of the GHC the worker was built with (another GHC's,
-- /usr/lib/ghc beside a ghcup install say, fails in ways that do not say why).
findLibdir :: IO FilePath
findLibdir = do
  fromEnv <- lookupEnv "GHC_WORKER_LIBDIR"
  case fromEnv of
    Just dir -> return dir
    Nothing -> do
      builtIn <- isOurs GHC_LIBDIR
      if builtIn
        then return GHC_LIBDIR
        else do
          asked <- try (readProcess "ghc" ["--print-libdir"] "")
          case fmap (takeWhile (/= '\n')) asked of
            Right dir -> do
              ours <- isOurs dir
              if ours then return dir else noLibdir ("`ghc --print-libdir` says " ++ dir ++ ", another GHC's")
            Left e -> noLibdir ("`ghc --print-libdir` failed: " ++ show (e :: IOException))
  where
    -- Its package database holds the ghc package of this version (`ghc-9.0.2.conf`; a
    -- unit id with a hash after the version, as some builds have, too).
    isOurs dir = do
      listed <- try (listDirectory (dir </> "package.conf.d"))
      let names = either (const []) id (listed :: Either IOException [FilePath])
          prefix = "ghc-" ++ cProjectVersion
          ghcUnit name = name == prefix ++ ".conf" || (prefix ++ "-") `isPrefixOf` name && ".conf" `isSuffixOf` name
      return (any ghcUnit names)
    noLibdir why = do
      hPutStrLn stderr $
        "ghc-worker: no libdir of GHC " ++ cProjectVersion ++ " (the GHC this worker was built with): "
          ++ GHC_LIBDIR ++ " is not one, and " ++ why
          ++ ". Set GHC_WORKER_LIBDIR, or rebuild the worker with the GHC you use."
      exitWith (ExitFailure 2)

-- | A private directory (mode 0700, made here, never one found) for captured output and
-- GHC's temporary files, removed at exit: @ghc-worker-<pid>@, or @ghc-worker-<pid>-<n>@
-- when that name is taken. Those of workers that were killed (their process is gone) are
-- removed first.
withScratchDirectory :: (FilePath -> IO a) -> IO a
withScratchDirectory = bracket make removeDirectoryRecursive
  where
    make = do
      tmp <- getTemporaryDirectory
      pid <- getProcessID
      leftovers <- filter ("ghc-worker-" `isPrefixOf`) <$> listDirectory tmp
      forM_ leftovers $ \name -> do
        let owner = takeWhile isDigit (drop (length "ghc-worker-") name)
            suffix = drop (length "ghc-worker-" + length owner) name
        gone <- not <$> doesDirectoryExist ("/proc" </> owner)
        when (not (null owner) && (null suffix || isSuffix suffix) && gone) $
          void (try (removeDirectoryRecursive (tmp </> name)) :: IO (Either IOException ()))
      fresh tmp ("ghc-worker-" ++ show pid) (0 :: Int)
    isSuffix ('-' : n) = not (null n) && all isDigit n
    isSuffix _ = False
    -- Made with mode 0700 by this call: a directory someone else made first (the name is
    -- guessable, in a shared TMPDIR) is never used.
    fresh tmp base n = do
      let dir = tmp </> (if n == 0 then base else base ++ "-" ++ show n)
      made <- try (createDirectory dir 0o700)
      case made of
        Right () -> return dir
        Left e
          | isAlreadyExistsError e && n < 100 -> fresh tmp base (n + 1)
          | otherwise -> ioError e

compileOnce :: FilePath -> FilePath -> [String] -> IO ()
compileOnce libdir scratch args = do
  expanded <- handle argfileFailure (expandArgfiles args)
  (code, output) <- runGhc (Just libdir) $ do
    worker <- newWorker (scratch </> "output")
    compile worker "" expanded []
  B.hPutStr stderr output
  exitWith (if code == 0 then ExitSuccess else ExitFailure code)
  where
    -- An argument file that cannot be expanded fails the action before GHC runs, with the
    -- exit code the runtime gives the same request (125).
    argfileFailure (ArgfileError message) = do
      hPutStrLn stderr ("ghc-worker: " ++ message)
      exitWith (ExitFailure 125)

-- | Serves requests one at a time until stdin ends. Startup arguments (after removing
-- @--persistent_worker@) come before every request's own arguments.
serve :: FilePath -> FilePath -> [String] -> IO ()
serve libdir scratch startupArgs = do
  (input, out) <- protectStdio
  logReports <- (== Just "1") <$> lookupEnv "GHC_WORKER_REPORT"
  runGhc (Just libdir) $ do
    worker <- newWorker (scratch </> "output")
    let loop = do
          next <- liftIO (readRequest input)
          case next of
            Nothing -> return ()
            Just request
              | reqCancel request -> loop -- one request at a time: it has already been answered
              | otherwise -> do
                  let inputs = [(inputPath i, inputDigest i) | i <- reqInputs request]
                  (code, output) <- compile worker (reqSandboxDir request) (startupArgs ++ reqArguments request) inputs
                  -- Verbosity 10 (what newer Bazels send with --worker_verbose) adds what the
                  -- request reused to its output; GHC_WORKER_REPORT=1 logs it on stderr.
                  report <- liftIO (lastReport worker)
                  liftIO (when logReports (hPutStr stderr report >> hFlush stderr))
                  let shown = if reqVerbosity request >= 10 then output <> utf8Bytes report else output
                  liftIO (writeResponse out (WorkResponse (fromIntegral code) shown (reqId request) False))
                  loop
    loop
