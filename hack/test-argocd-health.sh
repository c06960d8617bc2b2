#!/usr/bin/env bash
# Runs Kiln's Argo CD health checks against their test cases with a real Lua 5.1 interpreter.
#
#   hack/test-argocd-health.sh
#
# Layout (Argo CD's resource_customizations convention):
#   deploy/argocd/health/<group>/<Kind>/health.lua
#   deploy/argocd/health/<group>/<Kind>/health_test.yaml   tests[] {healthStatus {status, message}, inputPath}
#   deploy/argocd/health/<group>/<Kind>/testdata/*.json    the objects (JSON, which is also YAML)
#
# Each case runs in a fresh lua5.1 process with the object as the global `obj`, in a sandbox
# shaped like Argo CD's (gopher-lua with only the base, table and a safe os library: no
# `string`, `io` or `debug`, and no string methods), and must return exactly the expected
# status and message. Every testdata file must be used by a case, and every health.lua must
# have cases.
#
# Needs: lua5.1 (Debian/Ubuntu package `lua5.1`) and python3 (standard library only).
# Exits non-zero on a missing tool, a malformed case, a script error or any mismatch.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
health_dir="${root}/deploy/argocd/health"

die() {
  echo "test-argocd-health: $*" >&2
  exit 2
}

command -v lua5.1 >/dev/null 2>&1 ||
  die "lua5.1 not found on PATH. Argo CD runs health checks with a Lua 5.1 interpreter (gopher-lua); install one with: apt-get install -y lua5.1"
lua_version="$(lua5.1 -v 2>&1 || true)"
case "${lua_version}" in
  "Lua 5.1"*) ;;
  *) die "lua5.1 on PATH is not Lua 5.1 (it says: ${lua_version})" ;;
esac
command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH (needed to read the JSON test inputs)"
[ -d "${health_dir}" ] || die "no health checks found: ${health_dir} does not exist"

exec python3 - "${health_dir}" <<'PY'
import json
import os
import re
import subprocess
import sys

health_dir = sys.argv[1]
VALID = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def fail(msg):
    print("test-argocd-health: " + msg, file=sys.stderr)
    sys.exit(2)


def lua_string(s):
    """A Lua 5.1 string literal for s, byte by byte (decimal escapes for anything unusual)."""
    out = ['"']
    for b in s.encode("utf-8"):
        c = chr(b)
        if 0x20 <= b < 0x7F and c not in '"\\':
            out.append(c)
        else:
            out.append("\\%03d" % b)
    out.append('"')
    return "".join(out)


def lua_value(v):
    """A Lua table constructor for decoded JSON, as Argo CD's decodeValue builds it."""
    if v is None:
        return "nil"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return lua_string(v)
    if isinstance(v, list):
        return "{" + ", ".join(lua_value(x) for x in v) + "}"
    if isinstance(v, dict):
        return "{" + ", ".join("[%s] = %s" % (lua_string(k), lua_value(x)) for k, x in v.items()) + "}"
    raise TypeError("unsupported JSON value %r" % (v,))


# Runs the health script the way Argo CD does: `obj` is a global, the script's return value is
# the health, and only the libraries Argo CD opens for configured scripts are visible.
DRIVER = r"""
local script_path, obj = ...
local write, exit, stdstring = io.write, os.exit, string
local chunk, err = loadfile(script_path)
if not chunk then
  write("ERR\n", "does not load: ", tostring(err))
  exit(0)
end
local env = {}
for _, name in ipairs({"assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall",
    "print", "rawequal", "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring",
    "type", "unpack", "xpcall", "_VERSION"}) do
  env[name] = _G[name]
end
env.table = {concat = table.concat, insert = table.insert, maxn = table.maxn,
  remove = table.remove, sort = table.sort}
env.os = {clock = os.clock, date = os.date, difftime = os.difftime, time = os.time}
env._G = env
env.obj = obj
setfenv(chunk, env)
local string_mt = getmetatable("")
string_mt.__index = nil -- no string methods: Argo CD does not open the string library
local ok, hs = pcall(chunk)
string_mt.__index = stdstring
if not ok then
  write("ERR\n", "raised an error: ", tostring(hs))
elseif type(hs) ~= "table" then
  write("ERR\n", "returned a ", type(hs), ", not a table")
elseif type(hs.status) ~= "string" then
  write("ERR\n", "returned hs.status of type ", type(hs.status), ", not a string")
elseif hs.message ~= nil and type(hs.message) ~= "string" then
  write("ERR\n", "returned hs.message of type ", type(hs.message), ", not a string")
else
  write("OK\n", hs.status, "\n", hs.message or "")
end
"""


def parse_health_test(path):
    """Reads a health_test.yaml written in the fixed shape Argo CD's own files use:

    tests:
    - healthStatus:
        status: Healthy
        message: "..."      (double-quoted, JSON escapes only)
      inputPath: testdata/x.json

    Anything else is an error, so that a typo never silently drops a case.
    """
    tests, current, saw_tests = [], None, False
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            where = "%s:%d" % (path, lineno)
            line = line.rstrip("\n")
            if re.fullmatch(r"\s*(#.*)?", line):
                continue
            if re.fullmatch(r"tests:\s*", line):
                saw_tests = True
                continue
            if not saw_tests:
                fail("%s: expected 'tests:' first" % where)
            if re.fullmatch(r"\s*-\s+healthStatus:\s*", line):
                current = {}
                tests.append((where, current))
                continue
            if current is None:
                fail("%s: expected '- healthStatus:'" % where)
            m = re.fullmatch(r"\s+(status|message|inputPath):\s+(.*?)\s*", line)
            if not m:
                fail("%s: unexpected line %r" % (where, line))
            key, value = m.groups()
            if key in current:
                fail("%s: duplicate %s" % (where, key))
            if key == "message":
                if not (value.startswith('"') and value.endswith('"')):
                    fail('%s: write the message double-quoted ("...")' % where)
                try:
                    value = json.loads(value)
                except ValueError as e:
                    fail("%s: bad message string: %s" % (where, e))
            elif not re.fullmatch(r"[^\s\"'#]+", value):
                fail("%s: bad %s value %r" % (where, key, value))
            current[key] = value
    if not tests:
        fail("%s: no test cases" % path)
    for where, t in tests:
        for key in ("status", "message", "inputPath"):
            if key not in t:
                fail("%s: test case has no %s" % (where, key))
        if t["status"] not in VALID:
            fail("%s: %r is not an Argo CD health status (%s)" % (where, t["status"], ", ".join(sorted(VALID))))
    return tests


scripts = []
for group in sorted(os.listdir(health_dir)):
    group_dir = os.path.join(health_dir, group)
    if not os.path.isdir(group_dir):
        continue
    for kind in sorted(os.listdir(group_dir)):
        script = os.path.join(group_dir, kind, "health.lua")
        if os.path.isfile(script):
            scripts.append((group, kind, script))
if not scripts:
    fail("no <group>/<Kind>/health.lua under %s" % health_dir)

total = failed = 0
for group, kind, script in scripts:
    kind_dir = os.path.dirname(script)
    test_file = os.path.join(kind_dir, "health_test.yaml")
    if not os.path.isfile(test_file):
        fail("%s has no health_test.yaml next to it" % script)
    used = set()
    for where, t in parse_health_test(test_file):
        input_path = os.path.normpath(os.path.join(kind_dir, t["inputPath"]))
        used.add(input_path)
        name = "%s/%s %s" % (group, kind, t["inputPath"])
        total += 1
        try:
            with open(input_path, encoding="utf-8") as f:
                obj = json.load(f)
        except (OSError, ValueError) as e:
            fail("%s: cannot read %s: %s" % (where, t["inputPath"], e))
        if obj.get("kind") != kind or not str(obj.get("apiVersion", "")).startswith(group + "/"):
            fail("%s: %s is a %s %s, not a %s/%s" % (where, t["inputPath"], obj.get("apiVersion"), obj.get("kind"), group, kind))
        driver = "local obj = %s\n" % lua_value(obj)
        driver = DRIVER.replace("local script_path, obj = ...", "local script_path = %s\n%s" % (lua_string(script), driver))
        proc = subprocess.run(["lua5.1", "-"], input=driver.encode("utf-8"), capture_output=True)
        out = proc.stdout.decode("utf-8", "replace")
        if proc.returncode != 0 or not out.startswith(("OK\n", "ERR\n")):
            failed += 1
            print("FAIL %s: lua5.1 exited %d: %s%s" % (name, proc.returncode, out, proc.stderr.decode("utf-8", "replace")))
            continue
        tag, _, rest = out.partition("\n")
        if tag == "ERR":
            failed += 1
            print("FAIL %s: health.lua %s" % (name, rest))
            continue
        status, _, message = rest.partition("\n")
        if status not in VALID:
            failed += 1
            print("FAIL %s: %r is not an Argo CD health status (Argo CD would report Unknown)" % (name, status))
        elif (status, message) != (t["status"], t["message"]):
            failed += 1
            print("FAIL %s\n     want %s %s\n     got  %s %s" % (name, t["status"], json.dumps(t["message"]), status, json.dumps(message)))
        else:
            print("ok   %s -> %s %s" % (name, status, json.dumps(message)))
    testdata = os.path.join(kind_dir, "testdata")
    if os.path.isdir(testdata):
        for entry in sorted(os.listdir(testdata)):
            path = os.path.normpath(os.path.join(testdata, entry))
            if path not in used:
                failed += 1
                print("FAIL %s/%s testdata/%s is not used by any case in health_test.yaml" % (group, kind, entry))

if failed:
    print("test-argocd-health: FAILED: %d problem(s) in %d case(s)" % (failed, total), file=sys.stderr)
    sys.exit(1)
print("test-argocd-health: all %d cases passed (%s)" % (total, ", ".join("%s/%s" % (g, k) for g, k, _ in scripts)))
PY
