// Builds the dashboard into gateway/api/static (served by the gateway, packaged in the wheel).
// Everything the browser loads comes from here: no CDN, so it works on a LAN with no internet.
import * as esbuild from "esbuild";
import { cpSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "gateway", "api", "static");

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

await esbuild.build({
  entryPoints: { app: join(here, "src", "main.js") },
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "esm",
  target: ["es2020"],
  outdir: out,
  legalComments: "linked",
  logLevel: "warning",
});

cpSync(join(here, "index.html"), join(out, "index.html"));
cpSync(join(here, "favicon.svg"), join(out, "favicon.svg"));

// Swagger UI for /schema/swagger, served locally instead of from a CDN.
const swagger = join(here, "node_modules", "swagger-ui-dist");
const vendor = join(out, "vendor", "swagger");
mkdirSync(vendor, { recursive: true });
for (const f of ["swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css", "LICENSE"]) {
  cpSync(join(swagger, f), join(vendor, f));
}
writeFileSync(join(out, "BUILT_BY"), "web/build.mjs: do not edit; rebuilt by setup.sh\n");
console.log(`dashboard built into ${out}`);
