"""The skill pack against the live server.

Everything the agent reads - skills/*/SKILL.md and the files beside them, program.md, the
crash-investigator subagent, README.md - is checked here:

* SKILL.md front matter follows the Agent Skills spec (name = folder, lowercase-hyphen, <= 64
  chars; description <= 1024 chars saying what and when; body < 500 lines; only spec keys);
  every file a skill links to exists inside the skill folder, and every file beside it is linked.
* Every tool-call example is a ```json block {"tool": ..., "arguments": {...}} and its arguments
  are validated against the input schema the REAL server reports: the server is started over
  stdio as a subprocess and a real MCP client lists its tools (no hand-copied schema).
* Every tool name mentioned (mcp__autoresearch__X, the plugin-namespaced form, backticked
  snake_case words) exists on the server; backticked skill/agent names exist.
* .claude/settings.json allows only real tools (and all of them); it denies edits to the harness.
* .claude/skills and .claude/agents expose the top-level skills/ and agents/ (symlinks).
* .claude-plugin/plugin.json and marketplace.json are valid, and the plugin's MCP config, with
  ${CLAUDE_PLUGIN_ROOT} substituted, starts the server for a real client; so does .mcp.json.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import npm_clients
import pytest
import yaml
from mcp import Client, StdioServerParameters

from mcp_server.domain.config import FleetConfig
from mcp_server.domain.variants import apply_overrides, list_constants
from mcp_server.surface.server import build_server

REPO = Path(__file__).resolve().parent.parent
SKILLS = REPO / "skills"
AGENTS = REPO / "agents"
SERVER_KEY = "autoresearch"
PLUGIN_DIR = REPO / ".claude-plugin"

SPEC_KEYS = {"name", "description", "license", "compatibility", "metadata", "allowed-tools"}
NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
FENCE_RE = re.compile(r"^[ \t]*```([^\n`]*)\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
BACKTICK_RE = re.compile(r"`([^`\n]+)`")
MCP_NAME_RE = re.compile(r"mcp__([A-Za-z0-9_-]+?)__([A-Za-z0-9_]+)")
SNAKE_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$")
KEBAB_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")
# snake_case words the documents may backtick that are neither tools nor schema fields.
TERMS = {"val_bpb", "harness_hash", "code_hash"}
# kebab-case words the documents may backtick that are neither skills nor agents.
KEBAB_TERMS = {"autoresearch-fleet"}
CLAUDE_TOOLS = {"Read", "Grep", "Glob", "Bash", "Edit", "Write", "WebFetch", "WebSearch", "TodoWrite"}
CALL_TIMEOUT = 120


def skill_dirs() -> list[Path]:
    return sorted(p for p in SKILLS.iterdir() if p.is_dir())


def agent_files() -> list[Path]:
    return sorted(AGENTS.glob("*.md"))


def documents() -> list[Path]:
    """Everything the agent (or a person setting it up) reads that may show tool calls."""
    docs = sorted(SKILLS.glob("*/*.md")) + [REPO / "program.md"] + agent_files()
    extra = REPO / "README.md"
    if extra.exists():
        docs.append(extra)
    return docs


def split_front_matter(path: Path) -> tuple[dict[str, Any], str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path}: must start with YAML front matter ('---' line)"
    end = text.find("\n---\n", 4)
    assert end > 0, f"{path}: front matter is not closed by a '---' line"
    meta = yaml.safe_load(text[4:end])
    assert isinstance(meta, dict), f"{path}: front matter must be a mapping"
    return meta, text[end + 5:]


def tool_calls(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Every ```json block of a document, parsed. In what the agent reads (skills, program.md, the
    subagent) a json block IS a tool call; the README may also show other JSON (settings), so
    there only blocks with a "tool" key count."""
    agent_facing = path.name != "README.md"
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE_RE.finditer(text):
        lang = m.group(1).strip().split()[0] if m.group(1).strip() else ""
        if lang != "json":
            continue
        line = text.count("\n", 0, m.start()) + 1
        try:
            call = json.loads(m.group(2))
        except json.JSONDecodeError as exc:
            pytest.fail(f"{path.relative_to(REPO)}:{line}: json block does not parse: {exc}")
        if agent_facing or (isinstance(call, dict) and "tool" in call):
            out.append((line, call))
    return out


def expand(value: str, env: dict[str, str]) -> str:
    """Claude Code's ${VAR} / ${VAR:-default} expansion in .mcp.json command, args and env."""
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3)
        if name in env:
            return env[name]
        assert default is not None, f"${{{name}}} has no default and is not set"
        return default
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, value)


async def _list_tools(params: StdioServerParameters) -> list[Any]:
    with anyio.fail_after(CALL_TIMEOUT):
        async with Client(params) as client:
            return list((await client.list_tools()).tools)


def list_tools(params: StdioServerParameters) -> list[Any]:
    return anyio.run(_list_tools, params)


def server_env(workspace: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["AUTORESEARCH_WORKSPACE"] = str(workspace)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# -- the live server --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def live_tools(tmp_path_factory) -> dict[str, Any]:
    """The real server, started over stdio as Claude Code would start it (a subprocess running
    the CLI's `serve`), listed by a real MCP client. name -> Tool."""
    workspace = tmp_path_factory.mktemp("skills-live") / "research"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_server.cli", "serve", "--workspace", str(workspace), "--log-level", "WARNING"],
        cwd=str(REPO),
        env=server_env(workspace),
    )
    tools = {t.name: t for t in list_tools(params)}
    assert len(tools) >= 18, f"the server lists only {sorted(tools)}"
    return tools


def _schema_words(schema: Any, props: set[str], enums: set[str]) -> None:
    if isinstance(schema, dict):
        for k, v in (schema.get("properties") or {}).items():
            props.add(k)
            _schema_words(v, props, enums)
        for e in schema.get("enum") or []:
            if isinstance(e, str):
                enums.add(e)
        if isinstance(schema.get("const"), str):
            enums.add(schema["const"])
        for k, v in schema.items():
            if k != "properties":
                _schema_words(v, props, enums)
    elif isinstance(schema, list):
        for v in schema:
            _schema_words(v, props, enums)


@pytest.fixture(scope="session")
def schema_words(live_tools) -> set[str]:
    """Every input/output field name and enum value the live schemas define."""
    props: set[str] = set()
    enums: set[str] = set()
    for t in live_tools.values():
        _schema_words(t.input_schema, props, enums)
        _schema_words(t.output_schema or {}, props, enums)
    return props | enums


def plugin_name() -> str:
    return json.loads((PLUGIN_DIR / "plugin.json").read_text())["name"]


def mcp_tool_prefixes() -> set[str]:
    """How Claude Code names this server's tools: project scope and plugin scope."""
    return {SERVER_KEY, f"plugin_{plugin_name()}_{SERVER_KEY}"}


# -- SKILL.md format ---------------------------------------------------------------------------


def test_there_are_skills_for_each_strategy():
    names = {p.name for p in skill_dirs()}
    assert len(names) >= 5, names
    for d in skill_dirs():
        assert (d / "SKILL.md").is_file(), f"{d.name}/ has no SKILL.md"


@pytest.mark.parametrize("skill", skill_dirs(), ids=lambda p: p.name)
def test_skill_front_matter_follows_the_spec(skill: Path):
    meta, body = split_front_matter(skill / "SKILL.md")
    assert set(meta) <= SPEC_KEYS, f"{skill.name}: keys outside the Agent Skills spec: {set(meta) - SPEC_KEYS}"
    name = meta.get("name")
    assert name == skill.name, f"name {name!r} must equal the folder name {skill.name!r}"
    assert isinstance(name, str) and len(name) <= 64 and NAME_RE.match(name), \
        f"{name!r}: lowercase letters, digits and single hyphens, <= 64 chars"
    desc = meta.get("description")
    assert isinstance(desc, str) and desc.strip(), f"{name}: description missing"
    assert len(desc) <= 1024, f"{name}: description is {len(desc)} chars (max 1024)"
    assert "<" not in desc and ">" not in desc, f"{name}: no angle brackets (XML) in the description"
    assert re.search(r"\bUse (it )?when\b", desc), f"{name}: the description must say when to use it ('Use when ...')"
    lines = body.count("\n") + 1
    assert lines < 500, f"{name}: body is {lines} lines; move detail into files beside SKILL.md"
    if "compatibility" in meta:
        assert isinstance(meta["compatibility"], str) and len(meta["compatibility"]) <= 500
    if "metadata" in meta:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta["metadata"].items())


def test_skill_descriptions_are_distinct():
    descs = [split_front_matter(d / "SKILL.md")[0]["description"] for d in skill_dirs()]
    assert len(set(descs)) == len(descs)


@pytest.mark.parametrize("skill", skill_dirs(), ids=lambda p: p.name)
def test_skill_links_resolve_one_level_deep(skill: Path):
    linked: set[Path] = set()
    for doc in sorted(skill.glob("*.md")):
        for target in LINK_RE.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{doc.relative_to(REPO)} links to missing {target}"
            assert path.parent == skill.resolve(), f"{doc.relative_to(REPO)}: {target} is not beside SKILL.md"
            linked.add(path)
    beside = {p.resolve() for p in skill.iterdir() if p.is_file() and p.name != "SKILL.md"}
    orphans = sorted(p.name for p in beside - linked)
    assert not orphans, f"{skill.name}: files beside SKILL.md that no document links to: {orphans}"


# -- tool-call examples against the live schemas -----------------------------------------------


def test_every_tool_call_example_validates_against_the_live_schema(live_tools):
    problems: list[str] = []
    seen: set[str] = set()
    total = 0
    for doc in documents():
        for line, call in tool_calls(doc):
            where = f"{doc.relative_to(REPO)}:{line}"
            total += 1
            if not isinstance(call, dict) or set(call) != {"tool", "arguments"}:
                problems.append(f"{where}: a json block must be exactly {{\"tool\": ..., \"arguments\": {{...}}}}")
                continue
            tool = live_tools.get(call["tool"])
            if tool is None:
                problems.append(f"{where}: unknown tool {call['tool']!r}")
                continue
            seen.add(tool.name)
            validator = jsonschema.Draft202012Validator(tool.input_schema)
            for err in validator.iter_errors(call["arguments"]):
                problems.append(f"{where}: {tool.name}: {'/'.join(map(str, err.path)) or 'arguments'}: {err.message}")
            extra = set(call["arguments"]) - set(tool.input_schema.get("properties", {}))
            if extra:
                problems.append(f"{where}: {tool.name}: unknown arguments {sorted(extra)}")
    assert not problems, "\n".join(problems)
    assert total >= 30, f"only {total} examples"
    missing = sorted(set(live_tools) - seen)
    assert not missing, f"tools with no example in any skill: {missing}"


def test_the_validator_rejects_a_bad_example(live_tools):
    """The check above is not vacuous: wrong arguments fail against the live schema."""
    wave = jsonschema.Draft202012Validator(live_tools["launch_wave"].input_schema)
    assert not wave.is_valid({"description": "x"})                      # axes missing
    assert not wave.is_valid({"description": "x", "axes": {"MATRIX_LR": 0.04}})  # levels must be a list
    promote = jsonschema.Draft202012Validator(live_tools["promote"].input_schema)
    assert not promote.is_valid({"experiment_ids": ["42"], "gpu_type": "H200"})  # not an id


def test_examples_pass_the_servers_own_argument_model(live_tools):
    """Stricter than JSON Schema (e.g. constant-name patterns on dict keys): the pydantic model the
    server validates every call with, built from the same code the live server runs."""
    server = build_server(FleetConfig(workspace=Path("/nonexistent/never-started")))
    manager = getattr(server, "_tool_manager", None)
    if manager is None:  # pragma: no cover - SDK internals moved; the JSON Schema check still holds
        pytest.skip("mcp SDK no longer exposes _tool_manager")
    problems = []
    for doc in documents():
        for line, call in tool_calls(doc):
            model = manager.get_tool(call["tool"]).fn_metadata.arg_model
            try:
                model.model_validate(call["arguments"])
            except Exception as exc:  # noqa: BLE001 - reported below
                problems.append(f"{doc.relative_to(REPO)}:{line}: {call['tool']}: {exc}")
    assert not problems, "\n".join(problems)


def test_example_constants_exist_in_the_template_train_py():
    """Overrides and wave axes in the examples name real constants of train_template/train.py and
    their values are accepted by the AST rewriter (the same one the engine uses)."""
    source = (REPO / "train_template" / "train.py").read_text()
    constants = list_constants(source)
    problems = []
    for doc in documents():
        for line, call in tool_calls(doc):
            args = call["arguments"]
            cells = [args.get("overrides") or {}]
            cells += [{k: v} for k, levels in (args.get("axes") or {}).items() for v in levels]
            for cell in cells:
                unknown = sorted(set(cell) - set(constants))
                if unknown:
                    problems.append(f"{doc.relative_to(REPO)}:{line}: not constants of train.py: {unknown}")
                    continue
                try:
                    apply_overrides(source, cell)
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"{doc.relative_to(REPO)}:{line}: {cell}: {exc}")
    assert not problems, "\n".join(dict.fromkeys(problems))


def test_tool_names_mentioned_exist(live_tools, schema_words):
    skills = {p.name for p in skill_dirs()}
    agents = {p.stem for p in agent_files()}
    prefixes = mcp_tool_prefixes()
    problems: list[str] = []
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        rel = doc.relative_to(REPO)
        for server, tool in MCP_NAME_RE.findall(text):
            if server not in prefixes:
                problems.append(f"{rel}: mcp__{server}__{tool}: server must be one of {sorted(prefixes)}")
            elif tool not in live_tools:
                problems.append(f"{rel}: mcp__{server}__{tool}: no such tool")
        for token in BACKTICK_RE.findall(text):
            word = token.strip().split("(")[0]
            if word.startswith("mcp__"):
                continue
            if doc.name == "README.md" and "(" not in token:
                continue  # the README also names files, config fields and commands; its calls are checked
            for part in word.split("."):
                if SNAKE_RE.match(part) and part not in live_tools and part not in schema_words and part not in TERMS:
                    problems.append(f"{rel}: `{token}` names no tool, argument or result field")
            if KEBAB_RE.match(word) and word not in skills | agents | KEBAB_TERMS:
                problems.append(f"{rel}: `{token}` names no skill or agent")
    assert not problems, "\n".join(problems)


# -- the subagent ------------------------------------------------------------------------------


def test_crash_investigator_subagent(live_tools):
    path = AGENTS / "crash-investigator.md"
    meta, body = split_front_matter(path)
    assert meta["name"] == path.stem
    assert meta.get("description") and "get_experiment" in meta["description"]
    tools = [t.strip() for t in str(meta["tools"]).split(",")]
    mcp = [t for t in tools if t.startswith("mcp__")]
    # It reads; it never acts.
    for t in mcp:
        m = MCP_NAME_RE.fullmatch(t)
        assert m and m.group(1) in mcp_tool_prefixes() and m.group(2) in live_tools, t
        assert live_tools[m.group(2)].annotations.read_only_hint, f"{t} is not read-only"
    for prefix in mcp_tool_prefixes():     # works as a project agent and as a plugin agent
        assert f"mcp__{prefix}__get_experiment" in tools
    assert set(tools) - set(mcp) <= {"Read", "Grep", "Glob"}, "the investigator must not edit or run anything"
    assert len(body.splitlines()) < 80


# -- Claude Code project wiring ----------------------------------------------------------------


def test_project_skills_and_agents_are_discoverable():
    for skill in skill_dirs():
        link = REPO / ".claude" / "skills" / skill.name
        assert link.is_symlink(), f".claude/skills/{skill.name} must link to skills/{skill.name}"
        assert not os.path.isabs(os.readlink(link)), "links must be relative (the repo moves)"
        assert link.resolve() == skill.resolve()
        assert (link / "SKILL.md").is_file()
    for extra in (REPO / ".claude" / "skills").iterdir():
        assert (SKILLS / extra.name).is_dir(), f".claude/skills/{extra.name} has no skills/{extra.name}"
    for agent in agent_files():
        link = REPO / ".claude" / "agents" / agent.name
        assert link.is_symlink() and link.resolve() == agent.resolve(), f".claude/agents/{agent.name}"


def test_settings_allow_only_real_tools_and_deny_harness_edits(live_tools):
    settings = json.loads((REPO / ".claude" / "settings.json").read_text())
    perms = settings["permissions"]
    allowed: set[str] = set()
    for rule in perms.get("allow", []) + perms.get("deny", []) + perms.get("ask", []):
        if not rule.startswith("mcp__"):
            continue
        m = MCP_NAME_RE.fullmatch(rule)
        assert m and m.group(1) == SERVER_KEY, f"{rule}: must be mcp__{SERVER_KEY}__<tool>"
        assert m.group(2) in live_tools, f"{rule}: no such tool"
        if rule in perms.get("allow", []):
            allowed.add(m.group(2))
    # An unattended night must not stall on a permission prompt.
    assert allowed == set(live_tools), f"not allowed: {sorted(set(live_tools) - allowed)}"
    edit_denies = [r[5:-1] for r in perms.get("deny", []) if r.startswith("Edit(") and r.endswith(")")]
    for path in ("train_template/prepare.py", "research/prepare.py"):
        assert any(fnmatch.fnmatch(path, pat.removeprefix("./")) for pat in edit_denies), \
            f"edits to {path} are not denied"
    assert "train_template/train.py" not in [p.removeprefix("./") for p in edit_denies]
    mcp_json = json.loads((REPO / ".mcp.json").read_text())
    assert set(settings.get("enabledMcpjsonServers", [])) <= set(mcp_json["mcpServers"])


def test_mcp_json_starts_the_server_for_a_real_client(tmp_path, live_tools):
    """.mcp.json's command, run as Claude Code runs it (from the repo root, ${VAR:-default}
    expanded), serves the same tools."""
    entry = json.loads((REPO / ".mcp.json").read_text())["mcpServers"][SERVER_KEY]
    assert entry.get("type", "stdio") == "stdio"
    env = server_env(tmp_path / "research")
    command = expand(entry["command"], env)
    if not Path(command).is_absolute() and not (REPO / command).exists() and shutil.which(command) is None:
        pytest.skip(f".mcp.json runs {command!r}, which this environment lacks (./fleet setup creates it)")
    env.update({k: expand(v, env) for k, v in (entry.get("env") or {}).items()})
    params = StdioServerParameters(command=command, args=[expand(a, env) for a in entry.get("args", [])],
                                   cwd=str(REPO), env=env)
    names = {t.name for t in list_tools(params)}
    assert names == set(live_tools)


# -- the plugin --------------------------------------------------------------------------------


def test_plugin_manifest_and_marketplace_are_valid():
    plugin = json.loads((PLUGIN_DIR / "plugin.json").read_text())
    assert NAME_RE.match(plugin["name"]) and len(plugin["name"]) <= 64
    assert re.match(r"^\d+\.\d+\.\d+", plugin["version"])
    assert plugin.get("description")
    # Components sit at the plugin root, not inside .claude-plugin/.
    assert {p.name for p in PLUGIN_DIR.iterdir()} <= {"plugin.json", "marketplace.json", "serve.sh"}
    assert (REPO / "skills").is_dir() and (REPO / "agents").is_dir()
    for key in ("skills", "agents", "commands"):
        assert key not in plugin, f"{key}: the default folder at the plugin root is used"

    market = json.loads((PLUGIN_DIR / "marketplace.json").read_text())
    assert NAME_RE.match(market["name"])
    assert market["owner"]["name"]
    entries = [p for p in market["plugins"] if p["name"] == plugin["name"]]
    assert len(entries) == 1, "the marketplace lists this plugin once"
    source = (REPO / entries[0]["source"]).resolve()
    assert source == REPO, "the plugin is this repository's root"
    assert (source / ".claude-plugin" / "plugin.json").is_file()
    assert entries[0].get("version", plugin["version"]) == plugin["version"]


def test_plugin_mcp_config_starts_the_server_from_another_project(tmp_path, live_tools):
    """The plugin's server entry with ${CLAUDE_PLUGIN_ROOT} = this repo, started from an unrelated
    project directory (as Claude Code does for an installed plugin), serves the same tools and
    puts its workspace in that project, not in the plugin."""
    plugin = json.loads((PLUGIN_DIR / "plugin.json").read_text())
    entry = plugin["mcpServers"][SERVER_KEY]
    assert "${CLAUDE_PLUGIN_ROOT}" in entry["command"], "plugin paths must use ${CLAUDE_PLUGIN_ROOT}"
    project = tmp_path / "someone-elses-project"
    project.mkdir()
    env = dict(os.environ, CLAUDE_PLUGIN_ROOT=str(REPO))
    env.pop("AUTORESEARCH_WORKSPACE", None)
    if not (REPO / ".venv" / "bin" / "autoresearch-fleet").exists() and not shutil.which("autoresearch-fleet"):
        env["AUTORESEARCH_FLEET_BIN"] = str(Path(sys.executable).parent / "autoresearch-fleet")
    command = expand(entry["command"], env)
    assert os.access(command, os.X_OK), f"{command} is not executable"
    params = StdioServerParameters(command=command, args=[expand(a, env) for a in entry.get("args", [])],
                                   cwd=str(project), env=env)
    names = {t.name for t in list_tools(params)}
    assert names == set(live_tools)
    assert (project / "research").is_dir(), "the workspace belongs in the user's project"
    assert not (REPO / ".claude-plugin" / "research").exists()


# -- the real Claude Code CLI, where one is installed -------------------------------------------


def claude_cli() -> str | None:
    """The Claude Code CLI: $CLAUDE_CODE_BIN, else tests/js's pinned one (installed on demand)."""
    found = os.environ.get("CLAUDE_CODE_BIN")
    if found:
        return found
    exe, _ = npm_clients.tool("claude")
    return str(exe) if exe else shutil.which("claude")


CLAUDE_SKIP = "" if claude_cli() else npm_clients.tool("claude")[1] or "no Claude Code CLI"


def run_claude(args: list[str], cwd: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Claude Code with a throw-away HOME: no login, no user settings, nothing of the user's touched.
    Without credentials `-p` stops before any model call, after printing its init message."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    full_env.update(HOME=str(home), DISABLE_AUTOUPDATER="1", DISABLE_TELEMETRY="1",
                    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", **env)
    return subprocess.run([claude_cli(), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)


def claude_init(cwd: Path, home: Path, **env: str) -> dict[str, Any]:
    out = run_claude(["-p", "hi", "--output-format", "stream-json", "--verbose"], cwd, home, **env)
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("type") == "system" and msg.get("subtype") == "init":
            return msg
    raise AssertionError(f"no init message from claude: {out.stdout[-2000:]} {out.stderr[-2000:]}")


@pytest.mark.skipif(bool(CLAUDE_SKIP), reason=CLAUDE_SKIP)
def test_real_claude_code_finds_the_skills_agent_server_and_plugin(tmp_path, live_tools):
    """Run in this repo, Claude Code lists the five project skills (through the .claude/skills
    links), the crash-investigator agent and the autoresearch server; `plugin validate` accepts the
    manifests; installed as a plugin from the local marketplace, the skills and agent appear
    namespaced and the plugin's server starts from another project (`claude mcp list` health check)."""
    home = tmp_path / "home"
    home.mkdir()
    # MCP_CONNECTION_NONBLOCKING=0: the init line waits for the server, so it says connected or not
    env = {"AUTORESEARCH_WORKSPACE": str(tmp_path / "research"), "MCP_CONNECTION_NONBLOCKING": "0"}
    skills = {p.name for p in skill_dirs()}
    tools = {f"mcp__{SERVER_KEY}__{t}" for t in live_tools}
    for cwd in (REPO, REPO / "skills"):          # the repo root, and a folder inside it
        init = claude_init(cwd, home, **env)
        assert skills <= set(init["skills"]), init["skills"]
        assert {p.stem for p in agent_files()} <= set(init["agents"]), init["agents"]
        assert {"name": SERVER_KEY, "status": "connected"}.items() <= next(
            s for s in init["mcp_servers"] if s["name"] == SERVER_KEY).items(), (cwd, init["mcp_servers"])
        assert tools <= set(init["tools"]), (cwd, sorted(tools - set(init["tools"])))

    for target in (".", ".claude-plugin/plugin.json"):
        res = run_claude(["plugin", "validate", target], REPO, home)
        assert res.returncode == 0 and "passed" in res.stdout, res.stdout + res.stderr

    name = plugin_name()
    project = tmp_path / "other-project"
    project.mkdir()
    assert run_claude(["plugin", "marketplace", "add", str(REPO)], project, home).returncode == 0
    try:
        res = run_claude(["plugin", "install",
                          f"{name}@{json.loads((PLUGIN_DIR / 'marketplace.json').read_text())['name']}"],
                         project, home)
        assert res.returncode == 0, res.stdout + res.stderr
        init = claude_init(project, home)
        assert {f"{name}:{s}" for s in skills} <= set(init["skills"])
        assert f"{name}:crash-investigator" in init["agents"]
        listing = run_claude(["mcp", "list"], project, home)
        line = next(ln for ln in listing.stdout.splitlines() if f"plugin:{name}:{SERVER_KEY}" in ln)
        assert "Connected" in line, listing.stdout + listing.stderr
        assert (project / "research").is_dir()
    finally:
        shutil.rmtree(home / ".claude" / "plugins" / "cache", ignore_errors=True)  # a copy of the repo


def test_plugin_without_an_install_says_the_one_command_to_run(tmp_path):
    """Installed as a plugin on a machine where the package is not installed yet, the server's
    start fails with ONE stderr line naming the command that fixes it (not a traceback)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FLEET_VENV": "no-such-venv"}
    res = subprocess.run([str(PLUGIN_DIR / "serve.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 1 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{REPO}/fleet setup" in lines[0], res.stderr
