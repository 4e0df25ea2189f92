// Validate glTF/GLB files with the Khronos glTF validator and print one JSON report per file.
// Usage: node validate_gltf.js FILE [FILE ...]   (exit 0 when every file has 0 errors, 1 otherwise, 2 on usage)
"use strict";
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

async function validateFile(file) {
  const bytes = new Uint8Array(fs.readFileSync(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 0,
    // a GLB written by us embeds everything; any external reference is itself an error
    externalResourceFunction: (uri) => Promise.reject(new Error(`external resource ${uri} not allowed`)),
  });
  return { file, report };
}

async function main() {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    process.stderr.write("usage: node validate_gltf.js FILE [FILE ...]\n");
    process.exit(2);
  }
  let errors = 0;
  const out = [];
  for (const file of files) {
    const result = await validateFile(file);
    errors += result.report.issues.numErrors;
    out.push(result);
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  process.exit(errors === 0 ? 0 : 1);
}

main().catch((err) => {
  process.stderr.write(`validate_gltf: ${err && err.stack ? err.stack : err}\n`);
  process.exit(2);
});
