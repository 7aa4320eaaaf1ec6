"""JavaToolchainInfo: the tools and options the Java rules compile, package and run with."""

JavaToolchainInfo = provider(
    doc = "What the Java rules compile, package and run with.",
    fields = {
        # The WorkerToolInfo of the javac worker (its fallback: the worker one-shot). Never
        # None. Typed Any: a .bzl outside the prelude cell is evaluated once per cell that
        # loads it, and a provider type from another cell's evaluation fails a type check.
        "compiler": provider_field(typing.Any),
        # The `jar` command. Never None.
        "jar": provider_field(RunInfo),
        # The `java` command, for java_binary's launcher. Never None.
        "java": provider_field(RunInfo),
        # Options added to every javac invocation; None for none.
        "javac_options": provider_field(list[str] | None, default = None),
        # The javac --release level; None for the compiler's default.
        "release": provider_field(str | None, default = None),
    },
)
