// A second opinion on JWT access tokens for the hostile token and key set
// campaigns of tests/auth/: panva's `jose` (the JOSE library under
// oidc-provider), verifying each token with the policy of the gateway there.
//
// stdin, one JSON line first: {"jwks": {...}, "issuer": "...",
// "audience": "...", "typ": "at+jwt", "algorithms": ["ES256"],
// "clockTolerance": 30}; then one compact token per line, and now and then
// {"jwks": {...}} alone, a key set in place of the one before, or a whole
// first line again, a key set and a policy in place of the ones before.
// stdout: one line per line read, in order: `ready` or `refused <code>` for
// a setup line (a key set jose refuses), `ok` or `refused <code>` for a token.
import readline from 'node:readline';
import { createLocalJWKSet, jwtVerify } from 'jose';

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
let options;
let keys;

for await (const line of lines) {
  if (line.startsWith('{')) {
    // Setup: the policy (first line), and a key set, which replaces the
    // one before. A compact token never starts with `{`.
    const setup = JSON.parse(line);
    if (setup.issuer !== undefined) {
      options = {
        issuer: setup.issuer,
        audience: setup.audience,
        typ: setup.typ,
        algorithms: setup.algorithms,
        clockTolerance: setup.clockTolerance,
        requiredClaims: ['exp'],
      };
    }
    try {
      keys = createLocalJWKSet(setup.jwks);
      process.stdout.write('ready\n');
    } catch (e) {
      keys = undefined;
      process.stdout.write(`refused ${e.code ?? e.name}\n`);
    }
    continue;
  }
  let verdict;
  try {
    await verify(line);
    verdict = 'ok';
  } catch (e) {
    verdict = `refused ${e.code ?? e.name}`;
  }
  process.stdout.write(`${verdict}\n`);
}

// jose refuses a token more than one key of the set matches; its docs show
// the caller trying each in turn, as the gateway does (RFC 7517 4.5 only
// says `kid`s SHOULD be distinct).
async function verify(token) {
  try {
    return await jwtVerify(token, keys, options);
  } catch (e) {
    if (e?.code !== 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') throw e;
    for await (const key of e) {
      try {
        return await jwtVerify(token, key, options);
      } catch (inner) {
        if (inner?.code !== 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') throw inner;
      }
    }
    throw e;
  }
}
