// A small MCP client on the official TypeScript SDK, with its DEFAULT 60 s request timeout, the way
// most MCP clients are built. Driven by tests/test_clients.py:
//
//   node sdk_client.mjs '<json: {command, args, workspace, mode}>'
//
// mode "recall": plain calls (no resetTimeoutOnProgress); a wait that returns early is called again.
// mode "reset":  calls with resetTimeoutOnProgress: true (progress restarts the 60 s timer), so one
//                wait call may block longer than 60 s.
// It runs a baseline, a factorial wave based on it, waits for the wave, keeps the best, and prints
// one JSON line: what happened, the progress timestamps, and every structured result checked
// against its tool's outputSchema with ajv (the validator the SDK itself uses).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import Ajv from "ajv";

const cfg = JSON.parse(process.argv[2]);
const SLEEPER = `# SIMULATION: a stand-in train.py that trains nothing; it takes SLEEP_S seconds and
# prints a result in the contract's format (val_bpb depends on MATRIX_LR, so cells differ).
import time
SLEEP_S = ${cfg.sleep_s}
MATRIX_LR = 0.04
for i in range(int(SLEEP_S)):
    print(f"step {i}", flush=True)
    time.sleep(1)
bpb = 1.0 + abs(MATRIX_LR - 0.05) * 10
print("---")
print(f"val_bpb:          {bpb:.6f}")
print(f'RESULT_JSON: {{"val_bpb": {bpb}, "num_steps": {int(SLEEP_S)}}}', flush=True)
`;

const ajv = new Ajv({ strict: false, allErrors: true });
const schemas = {};
const schemaErrors = [];
const progress = [];       // [seconds since start, progress, total, message]
const t0 = Date.now();
const since = () => (Date.now() - t0) / 1000;

const client = new Client({ name: "arf-ts-sdk-test", version: "1.0.0" });
const transport = new StdioClientTransport({ command: cfg.command, args: cfg.args, stderr: "inherit" });
await client.connect(transport);

const tools = (await client.listTools()).tools;
for (const t of tools) if (t.outputSchema) schemas[t.name] = ajv.compile(t.outputSchema);

async function call(name, args, opts = {}) {
  const res = await client.callTool({ name, arguments: args }, undefined, {
    onprogress: (p) => progress.push([since(), p.progress, p.total ?? null, p.message ?? ""]),
    ...(cfg.mode === "reset" ? { resetTimeoutOnProgress: true, maxTotalTimeout: 900_000 } : {}),
    ...opts,
  });
  if (res.isError) throw new Error(`${name} failed: ${res.content?.[0]?.text}`);
  const validate = schemas[name];
  if (validate && !validate(res.structuredContent)) schemaErrors.push({ name, errors: validate.errors });
  return res.structuredContent;
}

async function waitAll(args) {
  let calls = 0, res;
  const longest = [];
  for (;;) {
    calls += 1;
    const start = since();
    res = await call("wait_for_experiments", { ...args, timeout_s: 600 });
    longest.push(since() - start);
    if (res.still_running.length === 0) break;
    if (calls > 40) throw new Error("too many wait calls");
  }
  return { res, calls, longest: Math.max(...longest) };
}

writeFileSync(join(cfg.workspace, "sleeper.py"), SLEEPER);
const base = await call("launch_experiment", { description: "stand-in baseline", source: "sleeper.py" });
const baseId = base.experiments[0].id;
await waitAll({ experiment_ids: [baseId] });
const wave = await call("launch_wave", {
  description: "stand-in matrix lr", axes: { MATRIX_LR: [0.03, 0.05, 0.06] }, base: baseId,
});
const waveStart = since();
const waited = await waitAll({ wave_id: wave.wave_id });
const waveSeconds = since() - waveStart;
const best = waited.res.finished.filter((e) => e.status === "done").sort((a, b) => a.value - b.value)[0];
const kept = await call("keep_experiment", { experiment_id: best.id });
await client.close();

console.log(JSON.stringify({
  mode: cfg.mode, tools: tools.length, wave_seconds: waveSeconds, wave_calls: waited.calls,
  longest_call_s: waited.longest, finished: waited.res.finished.map((e) => [e.id, e.status, e.value]),
  kept: kept.experiment.id, kept_decision: kept.experiment.decision, best: best.id,
  progress, schema_errors: schemaErrors, validated: Object.keys(schemas).length,
}));
