"""javac_worker_binary: the javac worker built by Buck2 itself, with a plain (cold) javac."""

# The same JVM flags as toolchains/java/javac-worker (see there for why each is set):
# UTF-8 first, since an executor runs the worker in a POSIX locale, where a JDK 17 would
# read sources as ASCII and write diagnostics' other characters as "?".
JVM_FLAGS = [
    "-Dfile.encoding=UTF-8",
    "-Dstdout.encoding=UTF-8",
    "-Dstderr.encoding=UTF-8",
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",
    "-Xshare:auto",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:+DisplayVMOutputToStderr",
]

_MAIN_CLASS = "buck2.workers.javac.JavacWorker"

# javac's own packages a cancel needs to stop a compile (javac's entry point, its log and
# its queue of classes to analyse), as toolchains/java/javac-worker exports them.
_JAVAC_EXPORTS = " ".join([
    "--add-exports=jdk.compiler/com.sun.tools.javac.{}=ALL-UNNAMED".format(package)
    for package in ("main", "util", "file", "comp")
])

# Runs "$@", the java command line, as toolchains/java/javac-worker runs it (see there for
# why): with --persistent_worker, the protocol's stdout on fd 3 and fd 1 on stderr, its
# stdin on fd 4 and fd 0 on /dev/null.
_PROTOCOL_ON_FD_3 = " ".join([
    "for arg do",
    "if [ \"$arg\" = --persistent_worker ]; then",
    "exec 3>&1 1>&2 4<&0 0</dev/null;",
    "java=$1; shift;",
    "set -- \"$java\" -Dbuck2.workers.javac.protocolFd=3 -Dbuck2.workers.javac.protocolInFd=4 --add-opens=java.base/java.io=ALL-UNNAMED",
    _JAVAC_EXPORTS,
    "\"$@\";",
    "break;",
    "fi;",
    "done;",
    "exec \"$@\"",
])

# The Java release the worker's classes are built for, as toolchains/java/javac-worker
# builds them: classes a newer javac made for its own release would not load in an older
# java (UnsupportedClassVersionError), as on an executor's under routing native.
RELEASE = "17"

def _javac_worker_binary_impl(ctx: AnalysisContext) -> list[Provider]:
    classes = ctx.actions.declare_output("classes", dir = True)
    ctx.actions.run(
        cmd_args(ctx.attrs.javac[RunInfo], "--release", RELEASE, "-nowarn", "-d", classes.as_output(), ctx.attrs.srcs),
        category = "javac",
    )
    launcher = ctx.actions.write(
        "javac-worker.sh",
        cmd_args(
            "#!/bin/sh",
            cmd_args(
                "set --",
                # Each word quoted for the shell (absolute paths: a space in the project's
                # path would otherwise split one), as java_binary's launcher does.
                cmd_args(ctx.attrs.java[RunInfo], JVM_FLAGS, "-cp", classes, _MAIN_CLASS, quote = "shell"),
                "\"$@\"",
                delimiter = " ",
            ),
            _PROTOCOL_ON_FD_3,
        ),
        is_executable = True,
        absolute = True,
    )

    # The RunInfo names the classes directory on its command line (the launcher only
    # hides it in its text): a remote executor stages the files a worker's command line
    # names (remote persistent workers, routing native), and every path stays relative.
    return [
        DefaultInfo(default_output = launcher, other_outputs = [classes]),
        RunInfo(args = cmd_args(
            "/bin/sh",
            "-c",
            _PROTOCOL_ON_FD_3,
            "javac-worker",  # $0
            ctx.attrs.java[RunInfo],
            JVM_FLAGS,
            "-cp",
            classes,
            _MAIN_CLASS,
        )),
    ]

javac_worker_binary = rule(
    impl = _javac_worker_binary_impl,
    doc = "The javac worker, compiled by a plain javac action and run by a launcher script.",
    attrs = {
        "java": attrs.exec_dep(providers = [RunInfo], doc = "The java command."),
        "javac": attrs.exec_dep(providers = [RunInfo], doc = "The javac command."),
        "srcs": attrs.list(attrs.source(), doc = "The worker's .java files."),
    },
)
