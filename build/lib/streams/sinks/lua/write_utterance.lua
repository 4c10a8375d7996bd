-- Write one prediction and fold it into its call, atomically and idempotently (streams/aggregates.py is the
-- reference fold; tests compare the two). A replayed utterance (its hash still exists) changes nothing and returns
-- the alert it raised the first time and the prediction it stored, so that what is published again after a crash is
-- what Redis holds (a retried Kafka publish of that alert is possible, a second alert is not).
-- KEYS: 1 utterance hash, 2 call hash, 3 call timeline stream, 4 feed stream, 5 alerts stream
-- ARGV: 1 prediction fields (JSON object of strings), 2 score, 3 speaker, 4 utterance TTL s, 5 call TTL s,
--       6 timeline maxlen, 7 feed maxlen, 8 alerts maxlen, 9 EWMA alpha, 10 shift window k,
--       11 alert this role (1/0), 12 negative-below threshold, 13 n, 14 m, 15 now ms, 16 alert rule name
local utt, call, timeline, feed, alerts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('EXISTS', utt) == 1 then
  local stored, h = redis.call('HGETALL', utt), {}
  for i = 1, #stored, 2 do h[stored[i]] = stored[i + 1] end
  return {'dup', h['alert'] or '', cjson.encode(h)}
end
local fields = cjson.decode(ARGV[1])
local score, speaker = tonumber(ARGV[2]), ARGV[3]
local alpha, k = tonumber(ARGV[9]), tonumber(ARGV[10])
local n_need, m = tonumber(ARGV[13]), tonumber(ARGV[14])
local function f(x) return string.format('%.17g', x) end

local h = {}
local raw = redis.call('HGETALL', call)
for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
local out = {}
local function set(name, v) h[name] = v; out[#out + 1] = name; out[#out + 1] = v end

for _, p in ipairs({'all', speaker}) do
  local n = (tonumber(h[p .. ':count']) or 0) + 1
  local s = (tonumber(h[p .. ':sum']) or 0) + score
  set(p .. ':count', tostring(n)); set(p .. ':sum', f(s)); set(p .. ':mean', f(s / n))
  set(p .. ':min', f(math.min(tonumber(h[p .. ':min']) or score, score)))
  set(p .. ':max', f(math.max(tonumber(h[p .. ':max']) or score, score)))
  set(p .. ':last', f(score))
  if n == 1 then set(p .. ':ewma', f(score))
  else set(p .. ':ewma', f(alpha * score + (1 - alpha) * tonumber(h[p .. ':ewma']))) end
end

local sp = speaker .. ':'
local start_n = tonumber(h[sp .. 'start_n']) or 0
if start_n < k then
  set(sp .. 'start_n', tostring(start_n + 1))
  set(sp .. 'start_sum', f((tonumber(h[sp .. 'start_sum']) or 0) + score))
end
local recent = {}
for x in string.gmatch(h[sp .. 'recent'] or '', '[^,]+') do recent[#recent + 1] = tonumber(x) end
while #recent > k - 1 do table.remove(recent, 1) end
recent[#recent + 1] = score
local parts, rsum = {}, 0
for i, x in ipairs(recent) do parts[i] = f(x); rsum = rsum + x end
set(sp .. 'recent', table.concat(parts, ','))
local start_mean = tonumber(h[sp .. 'start_sum']) / tonumber(h[sp .. 'start_n'])
local recent_mean = rsum / #recent
set(sp .. 'start_mean', f(start_mean)); set(sp .. 'recent_mean', f(recent_mean))
set(sp .. 'shift', f(recent_mean - start_mean))
local neg = (h[sp .. 'neg'] or '') .. ((score < tonumber(ARGV[12])) and '1' or '0')
if #neg > m then neg = string.sub(neg, #neg - m + 1) end
set(sp .. 'neg', neg)

local alert_json = ''
if ARGV[11] == '1' then
  local _, negatives = string.gsub(neg, '1', '')
  local hot = #neg >= n_need and negatives >= n_need
  if hot and h[sp .. 'alert'] ~= '1' then
    set(sp .. 'alerts', tostring((tonumber(h[sp .. 'alerts']) or 0) + 1))
    alert_json = cjson.encode({schema_version = 1, call_id = fields['call_id'], speaker = speaker,
      utterance_id = fields['utterance_id'], rule = ARGV[16], negative = negatives, window = #neg,
      mean_score = recent_mean, raised_at = tonumber(ARGV[15])})
  end
  set(sp .. 'alert', hot and '1' or '0')
end
set('updated_at', ARGV[15]); set('last_utterance', fields['utterance_id'])

redis.call('HSET', call, unpack(out))
redis.call('EXPIRE', call, tonumber(ARGV[5]))
local flat = {}
for name, v in pairs(fields) do flat[#flat + 1] = name; flat[#flat + 1] = v end
if alert_json ~= '' then flat[#flat + 1] = 'alert'; flat[#flat + 1] = alert_json end
redis.call('HSET', utt, unpack(flat))
redis.call('EXPIRE', utt, tonumber(ARGV[4]))
local entry = {'utterance_id', fields['utterance_id'], 'speaker', speaker, 'score', f(score), 'label', fields['label'],
  'model_version', fields['model_version'], 'ts', ARGV[15]}
redis.call('XADD', timeline, 'MAXLEN', '~', ARGV[6], '*', unpack(entry))
redis.call('EXPIRE', timeline, tonumber(ARGV[5]))
entry[#entry + 1] = 'call_id'; entry[#entry + 1] = fields['call_id']
redis.call('XADD', feed, 'MAXLEN', '~', ARGV[7], '*', unpack(entry))
if alert_json ~= '' then
  redis.call('XADD', alerts, 'MAXLEN', '~', ARGV[8], '*', 'call_id', fields['call_id'], 'alert', alert_json)
end
return {'new', alert_json, ''}
