// The JS baseline of bench/bench_tokenizer.cpp: @lenml/tokenizers (a fork of transformers.js's
// tokenizers) encoding the same documents with the same tokenizer.json. Not a test.
//
//   node bench_tokenizer.mjs --modules DIR --tokenizer DIR --docs FILE --out FILE [--runs N]
// --modules: the folder whose node_modules holds @lenml/tokenizers; --docs: a JSON array of
// strings. Times encode() of their concatenation (a fresh tokenizer per run, so its word cache
// starts cold, as shoal's does), then encodes each document on its own and writes
// {"seconds": [...], "whole": [ids], "docs": [[ids], ...]}.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { performance } from "node:perf_hooks";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
for (const k of ["modules", "tokenizer", "docs", "out"]) {
  if (!args[k]) {
    console.error(`bench_tokenizer.mjs: --${k} is required`);
    process.exit(2);
  }
}
const runs = Number(args.runs ?? 3);
const require = createRequire(path.join(path.resolve(args.modules), "package.json"));
const { TokenizerLoader } = require("@lenml/tokenizers");
const tokenizerJSON = JSON.parse(fs.readFileSync(path.join(args.tokenizer, "tokenizer.json"), "utf8"));
const tokenizerConfig = JSON.parse(fs.readFileSync(path.join(args.tokenizer, "tokenizer_config.json"), "utf8"));
const load = () => TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });

const docs = JSON.parse(fs.readFileSync(args.docs, "utf8"));
const text = docs.join("");
const seconds = [];
let whole = null;
for (let r = 0; r < runs; ++r) {
  const tok = load();
  const t0 = performance.now();
  whole = tok.encode(text, { add_special_tokens: false });
  seconds.push((performance.now() - t0) / 1000);
}
const tok = load();
const perDoc = docs.map((d) => tok.encode(d, { add_special_tokens: false }));
fs.writeFileSync(args.out, JSON.stringify({ seconds, whole, docs: perDoc }));
