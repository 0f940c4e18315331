-- wrk script for bench/run.sh step 9: every request is the next path of one image pull
-- (the arguments after `--`: manifest by tag, layers, config), so the connections together
-- pull the image over and over. Headers given with -H (Accept) go on every request.
local paths = {}
local next_path = 0

function init(args)
  for i = 1, #args do
    paths[i] = args[i]
  end
end

function request()
  next_path = next_path % #paths + 1
  return wrk.format(nil, paths[next_path])
end
