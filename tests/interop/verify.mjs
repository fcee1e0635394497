// A second opinion on JWT access tokens for tests/interop.rs: panva's `jose`
// (the JOSE library under oidc-provider), verifying each token with the same
// policy scopegate's test config states.
//
// stdin, one JSON line first: {"jwks": {...}, "issuer": "...",
// "audience": "...", "typ": "at+jwt", "algorithms": ["ES256"],
// "clockTolerance": 30}; then one compact token per line.
// stdout: one line per token, `ok` or `refused <jose error code>`, in order.
import readline from 'node:readline';
import { createLocalJWKSet, jwtVerify } from 'jose';

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
let options;
let keys;

for await (const line of lines) {
  if (options === undefined) {
    const setup = JSON.parse(line);
    keys = createLocalJWKSet(setup.jwks);
    options = {
      issuer: setup.issuer,
      audience: setup.audience,
      typ: setup.typ,
      algorithms: setup.algorithms,
      clockTolerance: setup.clockTolerance,
      requiredClaims: ['exp'],
    };
    process.stdout.write('ready\n');
    continue;
  }
  let verdict;
  try {
    await jwtVerify(line, keys, options);
    verdict = 'ok';
  } catch (e) {
    verdict = `refused ${e.code ?? e.name}`;
  }
  process.stdout.write(`${verdict}\n`);
}
