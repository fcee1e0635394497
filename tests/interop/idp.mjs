// A real OAuth 2.0 authorization server for scopegate's interoperability test
// (tests/interop.rs): the `oidc-provider` package, configured in memory, on
// plain http on 127.0.0.1 only.
//
// Usage: node idp.mjs [PORT]   (or IDP_PORT=PORT; 0 or absent picks a free port)
//
// Once listening it prints exactly one JSON line on stdout:
//   {"issuer":"http://127.0.0.1:PORT","ready":true}
// and serves until it is killed or its stdin closes (so it never outlives the
// test process that started it). Everything else it says goes to stderr.
//
// Clients:
//   app       / app-secret        client_credentials, scopes orders:read orders:write
//   scopegate / scopegate-secret  introspection only (client_secret_basic)
// Resources (RFC 8707 `resource=`):
//   urn:orders:jwt     RFC 9068 JWT access tokens signed ES256 (typ at+jwt)
//   urn:orders:rs256   RFC 9068 JWT access tokens signed RS256
//   urn:orders:opaque  opaque access tokens (introspect them)
//   urn:billing:jwt    JWT access tokens for another API (wrong audience)

import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const SCOPES = 'orders:read orders:write';

const RESOURCES = {
  'urn:orders:jwt': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } },
  'urn:orders:rs256': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
  'urn:orders:opaque': { accessTokenFormat: 'opaque' },
  // Another API's tokens: a gateway for the orders API must refuse them.
  'urn:billing:jwt': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } },
};

function log(...args) {
  process.stderr.write(`[idp] ${args.join(' ')}\n`);
}

// Fresh signing keys on every start: nothing secret is committed.
function signingKeys() {
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return [
    { ...ec.privateKey.export({ format: 'jwk' }), kid: 'es256-1', alg: 'ES256', use: 'sig' },
    { ...rsa.privateKey.export({ format: 'jwk' }), kid: 'rs256-1', alg: 'RS256', use: 'sig' },
  ];
}

function configuration() {
  return {
    clients: [
      {
        client_id: 'app',
        client_secret: 'app-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: SCOPES,
      },
      {
        client_id: 'scopegate',
        client_secret: 'scopegate-secret',
        grant_types: [],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    jwks: { keys: signingKeys() },
    cookies: { keys: ['interop-test-cookie-key-not-secret'] },
    scopes: ['openid', 'offline_access', ...SCOPES.split(' ')],
    ttl: { ClientCredentials: 600 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      revocation: { enabled: true },
      introspection: {
        enabled: true,
        // Any authenticated confidential client (scopegate) may introspect
        // tokens issued to other clients (app); public clients may not.
        allowedPolicy: async (_ctx, client) => client.clientAuthMethod !== 'none',
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? 'urn:orders:jwt',
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resourceIndicator) => {
          const info = RESOURCES[resourceIndicator];
          if (!info) throw new errors.InvalidTarget();
          return { scope: SCOPES, audience: resourceIndicator, accessTokenTTL: 600, ...info };
        },
      },
    },
  };
}

const requested = process.argv[2] ?? process.env.IDP_PORT ?? '0';
const port = Number.parseInt(requested, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  log(`bad port: ${requested}`);
  process.exit(2);
}

// Listen first (port 0 picks one), then build the provider for that issuer.
const server = createServer();
server.on('error', (err) => {
  log(`server error: ${err.message}`);
  process.exit(1);
});
server.listen(port, HOST, () => {
  const issuer = `http://${HOST}:${server.address().port}`;
  const provider = new Provider(issuer, configuration());
  provider.on('server_error', (_ctx, err) => log(`server_error: ${err.stack ?? err}`));
  provider.on('grant.error', (_ctx, err) => log(`grant.error: ${err.message}`));
  provider.on('introspection.error', (_ctx, err) => log(`introspection.error: ${err.message}`));
  provider.on('revocation.error', (_ctx, err) => log(`revocation.error: ${err.message}`));
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer, ready: true })}\n`);
  log(`listening as ${issuer}`);
});

// Stop when the parent goes away (stdin closes) or asks (signals).
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
