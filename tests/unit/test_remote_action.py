"""A worker request as a REAPI Action: platform properties (the convention's, ours for
multiplex workers, and the platform's own), and the Command's arguments."""

from __future__ import annotations

from pathlib import Path

from worker_runtime.config import config_from_mapping
from worker_runtime.digests import DigestCache
from worker_runtime.envelope import Envelope
from worker_runtime.remote.action import build_action
from worker_runtime.remote.merkle import Blobs


def built_properties(
    tmp_path: Path, persistent: bool = True, **config: object
) -> tuple[dict[str, str], list[str]]:
    (tmp_path / "tool.py").write_text("print()\n")
    (tmp_path / "r.args").write_text("--out\no.txt\n")
    settings = config_from_mapping(
        {"command": ["python3", "tool.py"], "tool_inputs": ["tool.py"], **config}
    ).validated()
    built = build_action(
        settings,
        Envelope("r.args", (), ("o.txt",)),
        {},
        tmp_path,
        DigestCache(),
        Blobs(),
        extra_properties={
            "OSFamily": "linux",
            "persistentWorkerKey": "forged",
            "persistentWorkerProtocol": "json",
            "persistentWorkerMultiplex": "true",
        },
        persistent=persistent,
    )
    action = [(p.name, p.value) for p in built.action.platform.properties]
    command = [(p.name, p.value) for p in built.command.platform.properties]
    assert action == command == sorted(action)  # on both, sorted as the spec requires
    return dict(action), list(built.command.arguments)


def test_the_platform_properties_join_the_conventions_and_cannot_forge_the_key(
    tmp_path: Path,
) -> None:
    properties, arguments = built_properties(tmp_path, protocol="json")
    assert properties["OSFamily"] == "linux"
    assert properties["persistentWorkerKey"] != "forged"  # always the computed key
    assert properties["persistentWorkerProtocol"] == "json"
    assert "persistentWorkerMultiplex" not in properties  # the backend is singleplex
    assert arguments == ["python3", "tool.py", "@r.args"]  # valid one-shot on any server


def test_multiplex_backends_say_so_and_proto_is_not_named(tmp_path: Path) -> None:
    properties, _ = built_properties(tmp_path, multiplex=True)
    assert properties["persistentWorkerMultiplex"] == "true"
    assert "persistentWorkerProtocol" not in properties


def test_a_plain_action_carries_no_convention_property_whatever_the_config_says(
    tmp_path: Path,
) -> None:
    properties, _ = built_properties(tmp_path, persistent=False)
    assert properties == {"OSFamily": "linux"}
