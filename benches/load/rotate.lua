-- wrk script: every request carries a different pre-minted bearer token.
--
-- Environment:
--   BENCH_TOKENS_FILE   one compact JWS per line (examples/mint.rs writes it)
--   BENCH_WRK_THREADS   wrk's -t value, so threads take disjoint tokens
--   BENCH_TOKENS_START  index of the first token to use (default 0)
--
-- Thread t sends tokens start+t, start+t+T, start+t+2T, ... so that no token
-- repeats until the file is exhausted (then it wraps around).

local counter = 0

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end

function init(args)
   local path = os.getenv("BENCH_TOKENS_FILE")
   if not path then
      error("BENCH_TOKENS_FILE is not set")
   end
   step = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
   local start = tonumber(os.getenv("BENCH_TOKENS_START") or "0")
   tokens = {}
   for line in io.lines(path) do
      if #line > 0 then
         tokens[#tokens + 1] = "Bearer " .. line
      end
   end
   if #tokens == 0 then
      error("no tokens in " .. path)
   end
   idx = ((start + tonumber(tid)) % #tokens) + 1
   headers = {}
end

function request()
   headers["Authorization"] = tokens[idx]
   idx = idx + step
   if idx > #tokens then
      idx = idx - #tokens
   end
   return wrk.format(nil, nil, headers)
end
