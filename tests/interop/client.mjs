// An OAuth 2.0 client nobody on the team wrote, for tests/authorize/oauth4webapi.rs:
// panva's `oauth4webapi`, which checks every answer of an authorization
// server against the RFCs (RFC 6749, 7009, 7662, 8414, 9068, 9207), driven
// one step at a time against scopegate's built-in authorization server.
//
// stdin: one JSON object per line, a step (see `step` below); the first is
// `discover`. stdout: one JSON line per step, {"ok": result} or
// {"error": {...}} (what oauth4webapi threw), in order.
//
// The server's issuer is an https URL nobody can reach (`https://as.test`):
// every request to its origin goes to the gateway under test instead.
import readline from 'node:readline';
import * as oauth from 'oauth4webapi';

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
let as;
let options;

for await (const line of lines) {
  let answer;
  try {
    answer = { ok: await step(JSON.parse(line)) };
  } catch (e) {
    answer = { error: await describe(e) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}

async function describe(e) {
  if (e instanceof oauth.AuthorizationResponseError) {
    return { kind: 'authorization_response', error: e.error };
  }
  if (e instanceof oauth.ResponseBodyError) {
    return { kind: 'response_body', status: e.status, error: e.error };
  }
  if (e instanceof oauth.WWWAuthenticateChallengeError) {
    return {
      kind: 'challenge',
      status: e.status,
      challenges: e.cause.map((c) => ({ scheme: c.scheme, error: c.parameters.error })),
      // The challenge is read before the body, which says more (RFC 6749 5.2).
      body: await e.response.json().catch(() => null),
    };
  }
  return { kind: e.name, code: e.code, message: e.message };
}

function clientAuth(req) {
  if (req.secret === undefined) return oauth.None();
  return req.auth === 'post' ? oauth.ClientSecretPost(req.secret) : oauth.ClientSecretBasic(req.secret);
}

async function step(req) {
  const client = { client_id: req.client_id };
  switch (req.step) {
    case 'discover': {
      const issuer = new URL(req.issuer);
      const gateway = new URL(req.gateway);
      options = {
        [oauth.allowInsecureRequests]: true,
        [oauth.customFetch]: (url, init) => {
          const target = new URL(url);
          if (target.origin === issuer.origin) {
            target.protocol = gateway.protocol;
            target.host = gateway.host;
          }
          return fetch(target, init);
        },
      };
      const response = await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...options });
      as = await oauth.processDiscoveryResponse(issuer, response);
      return as;
    }
    case 'callback': {
      const params = oauth.validateAuthResponse(as, client, new URL(req.callback), req.state);
      return Object.fromEntries(params);
    }
    case 'code': {
      const params = oauth.validateAuthResponse(as, client, new URL(req.callback), req.state);
      const response = await oauth.authorizationCodeGrantRequest(
        as, client, clientAuth(req), params, req.redirect_uri, req.code_verifier, options,
      );
      return await oauth.processAuthorizationCodeResponse(as, client, response);
    }
    case 'refresh': {
      const response = await oauth.refreshTokenGrantRequest(
        as, client, clientAuth(req), req.refresh_token, options,
      );
      return await oauth.processRefreshTokenResponse(as, client, response);
    }
    case 'client_credentials': {
      const response = await oauth.clientCredentialsGrantRequest(
        as, client, clientAuth(req), new URLSearchParams({ scope: req.scope }), options,
      );
      return await oauth.processClientCredentialsResponse(as, client, response);
    }
    case 'password': {
      // RFC 6749 4.3, which the library has no helper for (OAuth 2.1 drops
      // it): the generic grant, whose answer it checks as RFC 6749 5.1.
      const response = await oauth.genericTokenEndpointRequest(
        as, client, clientAuth(req), 'password',
        new URLSearchParams({ username: req.username, password: req.password, scope: req.scope }),
        options,
      );
      return await oauth.processGenericTokenEndpointResponse(as, client, response);
    }
    case 'introspect': {
      const response = await oauth.introspectionRequest(as, client, clientAuth(req), req.token, options);
      return await oauth.processIntrospectionResponse(as, client, response);
    }
    case 'revoke': {
      const response = await oauth.revocationRequest(as, client, clientAuth(req), req.token, options);
      await oauth.processRevocationResponse(response);
      return true;
    }
    case 'validate_access_token': {
      // As a resource server: RFC 9068 (typ, iss, aud, exp, required claims),
      // the signature with the keys from the metadata's jwks_uri.
      const request = new Request('https://api.test/orders/7', {
        headers: { authorization: `Bearer ${req.token}` },
      });
      return await oauth.validateJwtAccessToken(as, request, req.audience, options);
    }
    default:
      throw new Error(`unknown step ${req.step}`);
  }
}
