-- wrk script: pipelining. Each connection write carries DEPTH requests for
-- the URL's path (default 80), the next batch going out when all of them
-- are answered (wrk counts every response).
--
--   wrk -t1 -c 200 -d 10s -s bench/pipeline.lua URL -- 80
init = function(args)
  local depth = tonumber(args[1]) or 80
  local r = {}
  for i = 1, depth do r[i] = wrk.format(nil, wrk.path) end
  req = table.concat(r)
end
request = function() return req end
