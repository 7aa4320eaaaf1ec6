{-# LANGUAGE ScopedTypeVariables #-}

-- | The warm GHC session and what may survive from one request to the next.
--
-- Each request starts from the DynFlags the worker started with plus exactly the
-- request's own arguments, and compiles in one-shot mode (what @ghc -c@ does). The
-- external package state (the interfaces GHC has loaded, with their types, instances and
-- rules) is what makes a warm compile fast; after each request it is filtered:
--
--   * package interfaces stay while the request reads the package databases the last
--     one read, unchanged on disk; other databases (or changed ones) start from a fresh
--     state, and are then the ones kept;
--   * a home-package interface (a dependency found through @-i@) stays only if the
--     request named its @.hi@ file in @WorkRequest.inputs@ with a digest; a later request
--     reuses it only if it resolves the module to the same file with the same digest and
--     every home module that interface was built against is reused too;
--   * a COMPLETE set stays with the modules of its constructors; annotations (read
--     only by compiler plugins) never stay, and a request that loads a plugin starts
--     from a fresh state and keeps nothing;
--   * never an interface GHC could not read (its empty placeholder), nor one with an
--     orphan family instance or a COMPLETE set of another module's type ('neverKept').
--
-- Nothing else (another request's flags, search path, or a stale interface) reaches a
-- request.
module WarmSession
  ( Worker
  , newWorker
  , compile
  , lastReport
  ) where

import Argfiles (ArgfileError (..), expandArgfiles)
import Capture (captureOutput, utf8Bytes)
import Control.Exception (IOException, SomeAsyncException, SomeException, displayException, evaluate, finally, fromException, throwIO, try)
import Control.Monad (filterM, forM, unless, void, when)
import qualified Data.ByteString as B
import qualified Data.ByteString.Char8 as BC
import Data.Char (isAlphaNum, isSpace, toUpper)
import Data.IORef
import GHC.Clock (getMonotonicTime)
import Data.List (isPrefixOf, isSuffixOf, partition, sort, stripPrefix)
import qualified Data.Map.Strict as Map
import Data.Maybe (catMaybes, fromMaybe, isJust, isNothing, listToMaybe)
import System.Exit (ExitCode (..))
import System.Process (rawSystem)
import qualified Data.Set as Set
import GHC (Ghc, getSession, getSessionDynFlags, interpretPackageEnv, printException, setSessionDynFlags)
import GHC.Driver.Monad (modifySession)
import GHC.Settings.Config (cProjectVersion)
import System.Environment (lookupEnv)
import System.Info (arch, os)
import GHC.Core (CoreRule (..))
import GHC.Core.FamInstEnv (emptyFamInstEnv, extendFamInstEnvList, famInstEnvElts)
import GHC.Core.InstEnv (emptyInstEnv, extendInstEnvList, instEnvElts, is_dfun_name)
import GHC.Driver.Monad (liftIO, reflectGhc, reifyGhc)
import GHC.Driver.Phases (Phase (StopLn))
import GHC.Driver.Pipeline (oneShot)
import GHC.SysTools.FileCleanup (cleanTempFiles)
import GHC.Driver.Session
import GHC.Driver.CmdLine (Warn)
import GHC.Driver.Types
import GHC.Types.Name (Name, nameModule_maybe)
import GHC.Types.Name.Env (mapNameEnv)
import GHC.Types.SrcLoc (Located, noLoc, unLoc)
import GHC.Types.Unique (getKey, getUnique)
import GHC.Types.Unique.FM (filterUFM_Directly, mapUFM, nonDetEltsUFM)
import GHC.Unit.Module.Env (emptyModuleEnv)
import GHC.Parser.Header (getOptionsFromFile)
import qualified GHC.LanguageExtensions as LangExt
import GHC.Types.Name.Occurrence (occEnvElts)
import GHC.Types.Name.Cache (NameCache (..))
import qualified Data.IntSet as IntSet
import GHC.Unit.Module
import GHC.Unit.State (UnitDatabase, lookupUnit, unitDatabasePath)
import GHC.Utils.Panic (GhcException (..), progName)
import GHC.Utils.Fingerprint (fingerprint0)
import System.Directory (doesFileExist, getCurrentDirectory, getHomeDirectory, getFileSize, getModificationTime, listDirectory, setCurrentDirectory, doesDirectoryExist)
import System.FilePath (normalise, takeDirectory, (<.>), (</>))
import System.Posix.Directory (createDirectory)
import System.IO (hPutStrLn, stderr)

-- | A kept home-package interface: the file it was read from and that file's digest.
data HomeIface = HomeIface {homePath :: !FilePath, homeDigest :: !B.ByteString}
  deriving (Eq, Show)

data Worker = Worker
  { workerPristineEps :: ExternalPackageState
  -- ^ The package state of a fresh session.
  , workerState :: IORef Kept
  , workerCaptureFile :: FilePath
  , workerLastReport :: IORef String
  -- ^ What the last request reused (the worker adds it to the output at verbosity >= 10).
  }

-- | What survives between requests.
data Kept = Kept
  { keptBase :: DynFlags
  -- ^ The DynFlags every request starts from.
  , keptDbFlags :: [PackageDBFlag]
  -- ^ The package database flags (the worker's, the request's and its environment
  -- file's) of the request the kept state is from.
  , keptUnitDbs :: Maybe [UnitDatabase UnitId]
  -- ^ The package databases those flags gave, as read: a request with the same flags
  -- reuses them unless they changed on disk.
  , keptDbFingerprint :: [String]
  -- ^ The package databases the kept state was loaded from, as they were on disk.
  , keptEps :: ExternalPackageState
  , keptLoadMode :: String
  -- ^ How the kept interfaces were read (with or without their pragmas: -O0 drops
  -- unfoldings and rules) and for which ways; another mode starts from a fresh state.
  , keptLastFlags :: Maybe ([String], DynFlags)
  -- ^ The session DynFlags the last request's flags gave, with what they came from:
  -- the same flags again skip setSessionDynFlags (3-5 ms of unit-state work).
  , keptHome :: Map.Map Module (HomeIface, [ModuleName])
  -- ^ Home interfaces in 'keptEps', with the home modules each was built against.
  }

-- | Mode flags of the @ghc@ command line that a per-module compile cannot mean.
unsupportedModes :: [String]
unsupportedModes =
  ["--make", "-e", "--interactive", "-M", "-E", "-C", "-S", "--show-iface", "--abi-hash", "--frontend", "--backpack", "--mk-dll"]

newWorker :: FilePath -> Ghc Worker
newWorker captureFile = do
  dflagsDefault <- getSessionDynFlags
  -- GHC's temporary files go in the worker's private directory (next to the capture
  -- file): removed at its exit, and at the next worker's start if it was killed.
  (dflags0, _, _) <- liftIO (parseDynamicFlagsCmdLine dflagsDefault [noLoc "-tmpdir", noLoc (takeDirectory captureFile)])
  -- ghc's Main runs compiles at verbosity 1 (the GHC API's default is 0).
  _ <- setSessionDynFlags dflags0 {ghcMode = OneShot, ghcLink = NoLink, verbosity = 1}
  base <- getSessionDynFlags
  env <- getSession
  pristine <- liftIO (readIORef (hsc_EPS env))
  fingerprint <- liftIO (databaseFingerprint base)
  state <- liftIO (newIORef (Kept base (packageDBFlags base) (unitDatabases base) fingerprint pristine (loadMode base) Nothing Map.empty))
  report <- liftIO (newIORef "")
  return (Worker pristine state captureFile report)

-- | What the last request started from, for the worker's verbose output.
lastReport :: Worker -> IO String
lastReport = readIORef . workerLastReport

-- | Compiles what the arguments name (a @ghc -c@ command line without @ghc@) in the
-- given directory. Returns the exit code and everything GHC (and the tools it ran)
-- printed, formatted as @ghc@ formats it.
compile :: Worker -> FilePath -> [String] -> [(FilePath, B.ByteString)] -> Ghc (Int, B.ByteString)
compile worker dir rawArgs inputs = reifyGhc $ \session -> do
  writeIORef (workerLastReport worker) "" -- a request that fails early reused nothing
  readIORef (workerState worker) >>= forgetVanishedTempDirs . keptBase
  let capture = captureOutput (workerCaptureFile worker) $
        inDirectory dir (reflectGhc (compileHere worker rawArgs inputs) session)
      scratch = takeDirectory (workerCaptureFile worker)
  -- The capture failed (a cleaner removed the worker's private directory, a full disk,
  -- no file descriptor left): this request's failure, not the worker's end. Only if the
  -- directory is gone, and this worker makes it anew itself (0700; never one another
  -- user made at that name meanwhile), is the request tried once more there.
  captured <- try capture
  retried <- case captured of
    Right done -> return (Right done)
    Left (e :: IOException) -> do
      gone <- not <$> doesDirectoryExist scratch
      remade <- if gone then try (createDirectory scratch 0o700) else return (Left e)
      case remade of
        Right () -> try capture
        Left _ -> return (Left e)
  case retried of
    Left (e :: IOException) -> return (1, utf8Bytes ("ghc-worker: the compile's output could not be captured in " ++ scratch ++ ": " ++ displayException e ++ "\n"))
    Right captured' -> answer captured'
  where
    answer (outcome, output) = case outcome of
      Right code -> return (code, output)
      Left e
        | Just (_ :: SomeAsyncException) <- fromException e -> throwIO e
        | Just ghcError <- fromException e, isSignal ghcError -> throwIO e
      Left e -> do
        -- Something outside GHC's own error reporting went wrong: start the next request
        -- from a fresh state rather than trust this one. What GHC printed before stays.
        modifyIORef' (workerState worker) (\k -> k {keptEps = workerPristineEps worker, keptHome = Map.empty})
        return (1, output <> utf8Bytes ("ghc-worker: " ++ displayException e ++ "\n"))

-- | GHC makes a directory for its temporary files (a module's assembly) once, remembers
-- it in 'dirsToClean' (shared by every request's DynFlags) and uses it again without
-- looking. A cleaner of the temporary directory may remove it between two requests: it
-- is forgotten then, and GHC makes another when it next needs one.
forgetVanishedTempDirs :: DynFlags -> IO ()
forgetVanishedTempDirs dflags = do
  made <- readIORef (dirsToClean dflags)
  present <- filterM (doesDirectoryExist . snd) (Map.toList made)
  when (length present /= Map.size made) $ writeIORef (dirsToClean dflags) (Map.fromList present)

inDirectory :: FilePath -> IO a -> IO a
inDirectory "" action = action
inDirectory dir action = do
  here <- getCurrentDirectory
  setCurrentDirectory dir
  action `finally` setCurrentDirectory here

compileHere :: Worker -> [String] -> [(FilePath, B.ByteString)] -> Ghc Int
compileHere worker rawArgs inputs = do
  expanded <- liftIO (try (expandArgfiles rawArgs))
  case expanded of
    -- The code every path gives an argument file that cannot be expanded (docs/argfiles.md);
    -- nothing ran, so what the worker keeps stays.
    Left (ArgfileError message) -> liftIO (hPutStrLn stderr ("ghc-worker: " ++ message)) >> return 125
    Right args -> compileArgs worker args inputs

compileArgs :: Worker -> [String] -> [(FilePath, B.ByteString)] -> Ghc Int
compileArgs worker args inputs = do
  let rest = filter (/= "-c") args
  case filter (`elem` unsupportedModes) rest of
    (mode : _) -> failWith ("ghc-worker: " ++ mode ++ " is not supported: each request is one `ghc -c` compile")
    []
      | "-c" `notElem` args ->
          failWith "ghc-worker: no -c: each request is one `ghc -c` compile (without -c ghc would link a program, which the worker does not do: link with ghc itself)"
    [] -> do
      kept <- liftIO (readIORef (workerState worker))
      parsed <- liftIO (try (parseDynamicFlagsCmdLine (keptBase kept) (map noLoc rest)))
      case parsed of
        Left e -> failWith (asGhcSaysIt e)
        Right (dflags1, leftover, warnings) -> do
          let (unknown, sources) = partition ("-" `isPrefixOf`) (map unLoc leftover)
          case (unknown, sources) of
            (flag : _, _) -> failWith ("ghc: unrecognised flag: " ++ flag ++ "\nUsage: For basic information, try the `--help' option.")
            (_, []) -> failWith "ghc: no input files\nUsage: For basic information, try the `--help' option."
            -- ghc's own check (its Main's; the GHC API skips it): one interface for several
            -- sources would be written by each in turn. (ghc 9.0 takes -o with several.)
            (_, _ : _ : _)
              | isJust (outputHi dflags1) -> failWith "ghc: -ohi can only be used when compiling a single source file\nUsage: For basic information, try the `--help' option."
            _ -> do
              missing <- liftIO (missingOutputDirectory dflags1)
              case missing of
                Just message -> failWith message
                Nothing -> runCompile worker kept dflags1 warnings (flagsKey sources rest) args sources inputs
  where
    failWith message = liftIO (hPutStrLn stderr message) >> return 1

-- | ghc's own check of @-o@ and @-ohi@ (its Main's; the GHC API skips it, and the worker
-- made the missing directory and compiled): the directory each names must exist. What
-- @ghc@ prints then, or Nothing.
missingOutputDirectory :: DynFlags -> IO (Maybe String)
missingOutputDirectory dflags = go [("-o", outputFile dflags), ("-ohi", outputHi dflags)]
  where
    go ((flag, Just path) : more) = do
      exists <- doesDirectoryExist (takeDirectory path)
      if exists
        then go more
        else
          return . Just $
            "<command line>: error: directory portion of " ++ show path
              ++ " does not exist (used with " ++ show flag ++ " option.)"
    go (_ : more) = go more
    go [] = return Nothing

-- | The arguments that shape a request's DynFlags apart from its outputs: everything
-- but the sources and the values of @-o@ and @-ohi@.
flagsKey :: [FilePath] -> [String] -> [String]
flagsKey sources = go
  where
    go (flag : _ : more) | flag `elem` ["-o", "-ohi"] = flag : go more
    go (arg : more)
      | arg `elem` sources = go more
      | otherwise = arg : go more
    go [] = []

-- | The session flags a request's arguments give, with what decides what it may reuse.
data Prepared = Prepared
  { prepKey :: [String]
  , prepDatabasesChanged :: Bool
  , prepFingerprint :: [String]
  }

runCompile :: Worker -> Kept -> DynFlags -> [Warn] -> [String] -> [String] -> [FilePath] -> [(FilePath, B.ByteString)] -> Ghc Int
runCompile worker kept dflags1 warnings argsKey coldArgs sources inputs = do
  tStart <- liftIO getMonotonicTime
  -- A package or environment error of the request's flags (-package of no package, a
  -- missing -package-env file or -package-db): answered as `ghc -c` answers it, and
  -- nothing was loaded, so what the worker keeps stays.
  prepared <- tryGhcException (prepareFlags kept dflags1 argsKey)
  case prepared of
    Left e -> liftIO (hPutStrLn stderr (asGhcSaysIt e)) >> return 1
    Right flags -> compilePrepared worker kept flags warnings coldArgs sources inputs tStart

-- | Runs an action of the session, returning an error of GHC other than a signal.
tryGhcException :: Ghc a -> Ghc (Either GhcException a)
tryGhcException action = reifyGhc $ \session -> do
  result <- try (reflectGhc action session)
  case result of
    Left e | isSignal e -> throwIO e
    _ -> return result

-- | An error of GHC as the @ghc@ program prints it (the worker's own name would be the
-- program name of 'show').
asGhcSaysIt :: GhcException -> String
asGhcSaysIt e = maybe shown ("ghc: " ++) (stripPrefix (progName ++ ": ") shown)
  where
    shown = show e

prepareFlags :: Kept -> DynFlags -> [String] -> Ghc Prepared
prepareFlags kept dflags1 argsKey = do
  -- What else the flags depend on: the working directory and the package environment
  -- files `ghc` reads (GHC's Main applies them; the GHC API does not by itself).
  here <- liftIO getCurrentDirectory
  environment <- liftIO (packageEnvironmentFingerprint here)
  wanted <- liftIO (interpretPackageEnv dflags1 {ghcMode = OneShot, ghcLink = NoLink})
  -- The package databases are compared with the last kept request's (not the worker's
  -- own): a -package-db every request adds (a toolchain's package_dbs, an environment
  -- file's package-db line) is read once, not again for every request.
  let sameDatabases = packageDBFlags wanted == keptDbFlags kept
      key = here : environment ++ argsKey
      noEnvironmentFile = environment == [""] && isNothing (packageEnv dflags1)
  case keptLastFlags kept of
    Just (lastKey, lastFlags)
      | lastKey == key && noEnvironmentFile && sameDatabases ->
          modifySession $ \h ->
            h {hsc_dflags = lastFlags {outputFile = outputFile dflags1, outputHi = outputHi dflags1}}
    _ -> void (setSessionDynFlags wanted {unitDatabases = if sameDatabases then keptUnitDbs kept else Nothing})
  onDisk <- getSessionDynFlags >>= liftIO . databaseFingerprint
  -- The same databases changed on disk: read them again. Other databases were read just
  -- now; unless they are the same files, in the same order, unchanged, both start from a
  -- fresh package state (and are kept for the next request).
  let changedOnDisk = onDisk /= keptDbFingerprint kept
      reread = sameDatabases && changedOnDisk
  when reread (void (setSessionDynFlags wanted {unitDatabases = Nothing}))
  read' <- getSessionDynFlags
  fingerprint <- if reread then liftIO (databaseFingerprint read') else return onDisk
  let databasesChanged = changedOnDisk || databasePaths (unitDatabases read') /= databasePaths (keptUnitDbs kept)
  return (Prepared key databasesChanged fingerprint)

-- | The files of the package databases read, in order.
databasePaths :: Maybe [UnitDatabase UnitId] -> Maybe [FilePath]
databasePaths = fmap (map unitDatabasePath)

compilePrepared :: Worker -> Kept -> Prepared -> [Warn] -> [String] -> [FilePath] -> [(FilePath, B.ByteString)] -> Double -> Ghc Int
compilePrepared worker kept (Prepared key databasesChanged fingerprint) warnings coldArgs sources inputs tStart = do
  dflags <- getSessionDynFlags
  let fresh = databasesChanged || loadMode dflags /= keptLoadMode kept
  -- Template Haskell and plugins can read annotations (never kept) and run code of
  -- home modules: such a request starts from a fresh state and keeps nothing.
  metaprogramming <- liftIO (usesMetaprogramming dflags sources)
  let digests = Map.fromList [(normalise p, d) | (p, d) <- inputs, not (B.null d)]
      pristine = workerPristineEps worker
      isolated = metaprogramming
  let usesPlugins = metaprogramming
  env <- getSession
  t0 <- liftIO getMonotonicTime
  reusable <- if fresh || usesPlugins then return Map.empty else liftIO (validHome dflags digests (keptHome kept))
  startEps <-
    if fresh || usesPlugins
      then return pristine
      else liftIO $ do
        names <- readIORef (hsc_NC env)
        evaluate (filterEps pristine names (homeUnit dflags) (keptModules dflags reusable (keptEps kept)) (keptEps kept))
  liftIO . writeIORef (workerLastReport worker) $
    "ghc-worker: started from "
      ++ (if fresh || usesPlugins then "a fresh state" else show (length (moduleEnvKeys (eps_PIT startEps))) ++ " kept interfaces")
      ++ "; reused home interfaces: ["
      ++ unwords (sort [moduleNameString (moduleName m) | m <- Map.keys reusable])
      ++ "]; dropped: ["
      ++ unwords (sort [moduleNameString (moduleName m) | m <- Map.keys (keptHome kept), not (Map.member m reusable)])
      ++ "]\n"
  liftIO $ do
    writeIORef (hsc_EPS env) startEps
    -- Every cached module location goes (package ones too, after a database change).
    writeIORef (hsc_FC env) emptyInstalledModuleEnv
  -- The dump files GHC has written are in a set shared by every request's flags: a file in
  -- it is appended to. Each request starts with none, as a ghc process does.
  liftIO (writeIORef (generatedDumps dflags) Set.empty)
  -- So are the numbers of the C wrappers of `foreign import capi` (global symbols, in the
  -- interface too): each request numbers them from 0, as a ghc process does.
  liftIO (writeIORef (nextWrapperNum dflags) emptyModuleEnv)
  -- And so is whether -dynamic-too can still write both outputs in one pass: one request
  -- it failed for (a dependency without its .dyn_hi) made every later -dynamic-too compile
  -- run a second, dynamic pass (which panics given -o). Each request starts able, as a
  -- ghc process does.
  liftIO (writeIORef (canGenerateDynamicToo dflags) True)
  t1 <- liftIO getMonotonicTime
  (code, trusted) <-
    if metaprogramming
      then (\c -> (c, True)) <$> liftIO (coldCompile coldArgs)
      else do
        result <- liftIO (try (handleFlagWarnings dflags warnings >> oneShot env StopLn [(s, Nothing) | s <- sources]) `finally` cleanTempFiles dflags)
        case result of
          Right () -> return (0, True)
          Left e
            | Just sourceError <- fromException e -> printException sourceError >> return (1, True)
            | Just ghcError <- fromException e, not (isSignal ghcError) -> liftIO (hPutStrLn stderr (asGhcSaysIt ghcError)) >> return (1, not (isInternal ghcError))
            | otherwise -> liftIO (throwIO e)
  t2 <- liftIO getMonotonicTime
  -- What this request loaded may serve the next one, filtered as the module header says.
  liftIO . modifyIORef' (workerLastReport worker) $ \r ->
    init r ++ "; flags " ++ showMs (t0 - tStart) ++ ", prepare " ++ showMs (t1 - t0) ++ ", compile " ++ showMs (t2 - t1) ++ "\n"
  -- An error of GHC itself (a panic, a tool it could not run) may leave what it loaded
  -- half-read (a panic inside a lazily loaded declaration stays there): nothing is kept.
  unless trusted . liftIO $ modifyIORef' (workerState worker) (\k -> k {keptEps = pristine, keptHome = Map.empty, keptLastFlags = Nothing})
  unless (isolated || not trusted) $ liftIO $ do
    eps <- readIORef (hsc_EPS env)
    names <- readIORef (hsc_NC env)
    home <- homeInterfaces dflags digests eps
    keptEps' <- evaluate (filterEps pristine names (homeUnit dflags) (keptModules dflags home eps) eps)
    writeIORef (workerState worker) $!
      Kept
        { keptBase = keptBase kept
        , keptDbFlags = packageDBFlags dflags
        , keptUnitDbs = unitDatabases dflags
        , keptDbFingerprint = fingerprint
        , keptEps = keptEps'
        , keptLoadMode = loadMode dflags
        , keptLastFlags = Just (key, dflags)
        , keptHome = home
        }
  return code

-- | What decides how interfaces are read into the package state.
loadMode :: DynFlags -> String
loadMode dflags = show (gopt Opt_IgnoreInterfacePragmas dflags, show (ways dflags))

-- | An error of GHC itself rather than of the code it compiled or of its flags.
isInternal :: GhcException -> Bool
isInternal e = case e of
  Panic _ -> True
  PprPanic _ _ -> True
  Sorry _ -> True
  PprSorry _ _ -> True
  InstallationError _ -> True
  _ -> False

isSignal :: GhcException -> Bool
isSignal (Signal _) = True
isSignal _ = False

-- | A compile by a cold ghc process (GHC_WORKER_GHC, else ghc on PATH), with the
-- request's arguments; its output reaches the response through the captured fds.
coldCompile :: [String] -> IO Int
coldCompile args = do
  ghc <- fromMaybe "ghc" <$> lookupEnv "GHC_WORKER_GHC"
  exit <- rawSystem ghc args
  -- A ghc killed by a signal: the code a shell gives it (128 + the signal), not negative.
  return (case exit of ExitSuccess -> 0; ExitFailure n | n < 0 -> 128 - n; ExitFailure n -> n)

-- | Whether the request runs Template Haskell, quasi-quotes, a plugin or an annotation,
-- by its flags or by the pragmas of its sources. An @ANN@ pragma's expression is run by
-- GHC's interpreter, which loads the code of home modules into the session's linker;
-- a warm session would then run that code, stale, for a later request's annotations.
--
-- Only a source's leading pragmas are read here, as the raw file has them: a source
-- with CPP on and a directive line (a pragma may come after an @#if@, or from an
-- @#include@) or a literate one (its pragmas are behind bird tracks or in a code block)
-- counts as one that may, and is compiled the isolated way too.
usesMetaprogramming :: DynFlags -> [FilePath] -> IO Bool
usesMetaprogramming dflags sources
  | metaFlags dflags = return True
  | otherwise = or <$> mapM fromPragmas sources
  where
    metaFlags d =
      xopt LangExt.TemplateHaskell d || xopt LangExt.QuasiQuotes d
        || not (null (pluginModNames d))
    fromPragmas source
      | any (`isSuffixOf` source) [".lhs", ".lhs-boot", ".lhsig"] = return True
      | otherwise = do
          options <- try (getOptionsFromFile dflags source) :: IO (Either SomeException [Located String])
          text <- try (B.readFile source) :: IO (Either IOException B.ByteString)
          case (options, text) of
            (Right found, Right bytes) -> do
              applied <- try (parseDynamicFilePragma dflags found) :: IO (Either SomeException (DynFlags, [Located String], [Warn]))
              return $ case applied of
                Right (withPragmas, _, _) ->
                  any (metaOption . unLoc) found || metaFlags withPragmas || hasAnnotation bytes
                    || (xopt LangExt.Cpp withPragmas && hasDirective bytes)
                Left _ -> True -- GHC will report the bad pragma; keep nothing to be safe
            _ -> return True -- unreadable here: GHC will report it; keep nothing to be safe
    metaOption option =
      option `elem` ["-XTemplateHaskell", "-XQuasiQuotes"] || "-fplugin" `isPrefixOf` option

-- | Whether a line of the source is a CPP directive (its first character other than a
-- space or tab is @#@).
hasDirective :: B.ByteString -> Bool
hasDirective = any (\line -> BC.take 1 (BC.dropWhile (`elem` " \t") line) == BC.pack "#") . BC.lines

-- | Whether the source holds an @ANN@ pragma (@{-# ANN@, any case, any spacing). One in a
-- comment or a string counts too: such a request only loses its warm start.
hasAnnotation :: B.ByteString -> Bool
hasAnnotation text = case B.breakSubstring (BC.pack "{-#") text of
  (_, rest)
    | B.null rest -> False
    | isAnn (BC.dropWhile isSpace (B.drop 3 rest)) -> True
    | otherwise -> hasAnnotation (B.drop 3 rest)
  where
    isAnn s =
      BC.map toUpper (B.take 3 s) == BC.pack "ANN"
        && maybe True (\(c, _) -> not (isAlphaNum c || c == '_')) (BC.uncons (B.drop 3 s))

showMs :: Double -> String
showMs seconds = show (round (seconds * 1000) :: Int) ++ " ms"

-- | Where a one-shot compile finds a home module's interface: the first @-i@ directory
-- holding it (no home interface is kept when @-hidir@ moves them elsewhere).
resolveInterface :: DynFlags -> ModuleName -> IO (Maybe FilePath)
resolveInterface dflags name
  | isJust (hiDir dflags) = return Nothing
  | otherwise = listToMaybe <$> filterM doesFileExist candidates
  where
    candidates = [normalise (dir </> moduleNameSlashes name <.> hiSuf dflags) | dir <- importPaths dflags]

-- | The kept home interfaces this request may reuse: same file, same digest, and every
-- home module each was built against reusable too.
validHome :: DynFlags -> Map.Map FilePath B.ByteString -> Map.Map Module (HomeIface, [ModuleName]) -> IO (Map.Map Module (HomeIface, [ModuleName]))
validHome dflags digests home = do
  checked <- forM (Map.toList home) $ \(m, entry@(HomeIface path digest, _)) -> do
    found <- resolveInterface dflags (moduleName m)
    let ok = moduleUnit m == homeUnit dflags && found == Just path && Map.lookup path digests == Just digest
    return (if ok then Just (m, entry) else Nothing)
  return (closeOverDeps dflags (Map.fromList (catMaybes checked)))

-- | The home interfaces this request loaded that a later request could reuse.
homeInterfaces :: DynFlags -> Map.Map FilePath B.ByteString -> ExternalPackageState -> IO (Map.Map Module (HomeIface, [ModuleName]))
homeInterfaces dflags digests eps = do
  let never = neverKept eps
  found <- forM (moduleEnvToList (eps_PIT eps)) $ \(m, iface) ->
    if moduleUnit m /= homeUnit dflags || Set.member m never || isHsBootOrSig (mi_hsc_src iface) || any ((== IsBoot) . gwib_isBoot) (dep_mods (mi_deps iface))
      then return Nothing
      else do
        path <- resolveInterface dflags (moduleName m)
        return $ do
          p <- path
          digest <- Map.lookup p digests
          return (m, (HomeIface p digest, map gwib_mod (dep_mods (mi_deps iface))))
  return (closeOverDeps dflags (Map.fromList (catMaybes found)))

-- | The modules of @eps@ never to keep, whatever the digests say:
--
--   * one whose interface GHC could not read (missing, corrupt, of another GHC or
--     module): GHC puts an empty interface in its place, its module hash zero (no real
--     interface's is), so that it reports the failure once. Kept, it gave a later
--     request that reads the same file an empty module instead of the error;
--   * one with what GHC uses whether or not a compile imports its module (GHC #13102):
--     an orphan type family instance (families are reduced with every instance loaded;
--     an orphan one makes the module an orphan with family instances), or a COMPLETE
--     set of another module's type (COMPLETE sets are looked up by type; one must
--     name a constructor or pattern synonym of its own module). A ghc process loads such
--     a module only when an import brings it in; kept, it reached every later compile.
--
-- Only what the package state keeps of an interface is read (its declarations,
-- instances and rules are not there), and nothing lazily loaded is forced.
neverKept :: ExternalPackageState -> Set.Set Module
neverKept eps =
  Set.fromList [m | (m, iface) <- moduleEnvToList (eps_PIT eps), unusable (mi_final_exts iface)]
    `Set.union` completeElsewhere
  where
    unusable exts = mi_mod_hash exts == fingerprint0 || (mi_orphan exts && mi_finsts exts)
    completeElsewhere =
      Set.fromList
        [ m
        | match <- concat (nonDetEltsUFM (eps_complete_matches eps))
        , Just m <- map nameModule_maybe (completeMatchConLikes match)
        , Just m /= nameModule_maybe (completeMatchTyCon match)
        ]

-- | Drops, until none is left to drop, every interface built against a home module
-- that is not itself in the map.
closeOverDeps :: DynFlags -> Map.Map Module (HomeIface, [ModuleName]) -> Map.Map Module (HomeIface, [ModuleName])
closeOverDeps dflags home
  | Map.size pruned == Map.size home = home
  | otherwise = closeOverDeps dflags pruned
  where
    pruned = Map.filter (all (\d -> Map.member (mkModule (homeUnit dflags) d) home) . snd) home

-- | The modules of @eps@ to keep: plain package interfaces, and the given home ones,
-- never a placeholder, nor one a compile that does not import it would see.
keptModules :: DynFlags -> Map.Map Module a -> ExternalPackageState -> Set.Set Module
keptModules dflags home eps =
  Set.fromList
    [ m
    | m <- moduleEnvKeys (eps_PIT eps)
    , not (Set.member m never)
    , if moduleUnit m == homeUnit dflags
        then Map.member m home
        else isJust (lookupUnit (unitState dflags) (moduleUnit m))
    ]
  where
    never = neverKept eps

-- | The package state with only what the given modules brought into it. Nothing here
-- may force a type, class or instance loaded from an interface: those are lazy thunks
-- that update the package state themselves when forced. Declarations are therefore
-- dropped by the uniques of their names, taken from the name cache, and family instances
-- are rebuilt from the per-module table.
filterEps :: ExternalPackageState -> NameCache -> Unit -> Set.Set Module -> ExternalPackageState -> ExternalPackageState
filterEps pristine names home keep eps
  | all (`Set.member` keep) (moduleEnvKeys (eps_PIT eps)) =
      -- Nothing to drop (the usual case): only the per-request fields are reset.
      eps
        { eps_is_boot = eps_is_boot pristine
        , eps_free_holes = eps_free_holes pristine
        , eps_ann_env = eps_ann_env pristine -- read only by TH and plugins, which run fresh
        }
  | otherwise =
  eps
    { eps_is_boot = eps_is_boot pristine
    , eps_PIT = filterModuleEnv (\m _ -> Set.member m keep) (eps_PIT eps)
    , eps_free_holes = eps_free_holes pristine
    , eps_PTE = filterUFM_Directly (\u _ -> not (IntSet.member (getKey u) dropped)) (eps_PTE eps)
    , eps_inst_env = extendInstEnvList emptyInstEnv (filter (keepName . is_dfun_name) (instEnvElts (eps_inst_env eps)))
    , eps_fam_inst_env = extendFamInstEnvList emptyFamInstEnv (concatMap famInstEnvElts (moduleEnvElts modFamInsts))
    , eps_rule_base = mapNameEnv (filter keepRule) (eps_rule_base eps)
    , eps_ann_env = eps_ann_env pristine
    , eps_complete_matches = mapUFM (filter keepCompleteMatch) (eps_complete_matches eps)
    , eps_mod_fam_inst_env = modFamInsts
    }
  where
    modFamInsts = filterModuleEnv (\m _ -> Set.member m keep) (eps_mod_fam_inst_env eps)
    -- Every name of every module whose interface goes.
    dropped =
      IntSet.fromList
        [ getKey (getUnique name)
        | (m, occs) <- moduleEnvToList (nsNames names)
        , not (Set.member m keep)
        , elemModuleEnv m (eps_PIT eps) || moduleUnit m == home
        , name <- occEnvElts occs
        ]
    keepName :: Name -> Bool
    keepName n = maybe True (`Set.member` keep) (nameModule_maybe n)
    keepRule rule@Rule {} = Set.member (ru_origin rule) keep
    keepRule _ = True
    keepCompleteMatch match = all keepName (completeMatchTyCon match : completeMatchConLikes match)

-- | The package environment files GHC would read for a compile in this directory (see
-- GHC's interpretPackageEnv), as they are on disk, and $GHC_ENVIRONMENT.
packageEnvironmentFingerprint :: FilePath -> IO [String]
packageEnvironmentFingerprint dir = do
  variable <- lookupEnv "GHC_ENVIRONMENT"
  home <- either (const "") id <$> (try getHomeDirectory :: IO (Either IOException FilePath))
  let name = ".ghc.environment." ++ platform
      platform = arch ++ "-" ++ os ++ "-" ++ cProjectVersion
      candidates = [d </> name | d <- ancestors dir] ++ [home </> ".ghc" </> platform </> "environments" </> "default" | not (null home)]
  stamps <- forM candidates $ \path -> do
    exists <- doesFileExist path
    if exists then (\t -> path ++ " " ++ show t) <$> getModificationTime path else return ""
  return (maybe "" ("GHC_ENVIRONMENT=" ++) variable : filter (not . null) stamps)
  -- [""]: no variable and no file, the only case in which the flags of an earlier
  -- request may be reused (applying a file also prints a line, as ghc does).
  where
    ancestors d = let parent = takeDirectory d in if parent == d then [d] else d : ancestors parent

-- | The package databases a session reads, as they are on disk (paths, sizes, times).
databaseFingerprint :: DynFlags -> IO [String]
databaseFingerprint dflags = do
  home <- either (const "") id <$> (try getHomeDirectory :: IO (Either IOException FilePath))
  -- The user database counts even before it exists: ghc reads it once created.
  let user = [home </> ".ghc" </> (arch ++ "-" ++ os ++ "-" ++ cProjectVersion) </> "package.conf.d" | not (null home)]
  fmap concat . forM (paths ++ filter (`notElem` paths) user) $ \path -> do
    fingerprintPath path
  where
    paths = maybe [] (map unitDatabasePath) (unitDatabases dflags)

fingerprintPath :: FilePath -> IO [String]
fingerprintPath path = do
  isDir <- doesDirectoryExist path
  files <- if isDir then map (path </>) . sort <$> listDirectory path else return [path]
  forM files $ \file -> do
    exists <- doesFileExist file
    if exists
      then do
        size <- getFileSize file
        time <- getModificationTime file
        return (file ++ " " ++ show size ++ " " ++ show time)
      else return (file ++ " missing")
