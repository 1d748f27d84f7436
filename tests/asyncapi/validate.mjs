// Validates AsyncAPI documents with the AsyncAPI parser (the validator of the AsyncAPI
// tooling): `node validate.mjs <file>...`. Prints every diagnostic; exits 1 when any has
// error severity, 2 when a file cannot be read or the parser cannot be loaded.
//
// Install the parser first: `npm ci --prefix tests/asyncapi`.

import { readFile } from "node:fs/promises";

let Parser;
let DiagnosticSeverity;
try {
    ({ Parser, DiagnosticSeverity } = await import("@asyncapi/parser"));
} catch (error) {
    console.error(`cannot load @asyncapi/parser (${error.message}); install it with \`npm ci --prefix tests/asyncapi\``);
    process.exit(2);
}

const files = process.argv.slice(2);
if (files.length === 0) {
    console.error("usage: node validate.mjs <asyncapi.json>...");
    process.exit(2);
}

const severityName = {
    [DiagnosticSeverity.Error]: "error",
    [DiagnosticSeverity.Warning]: "warning",
    [DiagnosticSeverity.Information]: "info",
    [DiagnosticSeverity.Hint]: "hint",
};

const parser = new Parser();
let errors = 0;
for (const file of files) {
    let text;
    try {
        text = await readFile(file, "utf8");
    } catch (error) {
        console.error(`${file}: cannot read: ${error.message}`);
        process.exit(2);
    }
    const { document, diagnostics } = await parser.parse(text, { source: file });
    let fileErrors = 0;
    for (const d of diagnostics) {
        const where = Array.isArray(d.path) && d.path.length > 0 ? d.path.join(".") : "(document)";
        console.log(`${file}: ${severityName[d.severity] ?? d.severity}: ${d.code}: ${where}: ${d.message}`);
        if (d.severity === DiagnosticSeverity.Error) {
            fileErrors += 1;
        }
    }
    if (document === undefined && fileErrors === 0) {
        console.log(`${file}: error: the parser returned no document`);
        fileErrors += 1;
    }
    if (fileErrors === 0) {
        console.log(`${file}: valid AsyncAPI ${document.version()}`);
    }
    errors += fileErrors;
}
process.exit(errors === 0 ? 0 : 1);
