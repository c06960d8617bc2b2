-- Argo CD health check for kiln.dev/v1alpha1 Job (not batch/v1 Job: Argo CD's built-in check
-- for that one is keyed batch/Job and never applies here).
--
-- Install as the argocd-cm key `resource.customizations.health.kiln.dev_Job` (docs/argocd.md).
-- Argo CD runs it with gopher-lua (Lua 5.1) in a sandbox without the string library, so the
-- script uses only `..`, tonumber and ipairs. hack/test-argocd-health.sh runs the cases listed
-- in health_test.yaml with lua5.1 under the same restrictions.
--
-- Mapping, first match wins:
--   no status / status.observedGeneration < metadata.generation -> Progressing
--   phase Expired or Expired=True (kept by `expiration: MarkExpired`) -> Suspended
--   phase Failed (`spec.failure` was set)                         -> Degraded
--   Stalled=True (e.g. a template that does not render)           -> Degraded
--   Ready=True (ExpiringSoon=True is mentioned, still Healthy)    -> Healthy
--   Reconciling=True                                              -> Progressing
--   phase Generating (waiting for the client's files and `complete`) -> Progressing
--   Ready=False (e.g. WorkspaceLost)                              -> Degraded
--   anything else (Ready=Unknown)                                 -> Progressing

local hs = {}
local status = obj.status

local function num(v)
  if v == nil then
    return nil
  end
  return tonumber(v)
end

local generation = nil
if obj.metadata ~= nil then
  generation = num(obj.metadata.generation)
end

-- The condition of the given type, or nil.
local function condition(ctype)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function isTrue(c)
  return c ~= nil and c.status == "True"
end

local function isFalse(c)
  return c ~= nil and c.status == "False"
end

-- The condition's message, or fallback when it has none.
local function messageOf(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

-- "Reason: message", or whichever of the two is set, or fallback.
local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

-- 1. Kiln has not looked at this generation yet.
local observed = nil
if status ~= nil then
  observed = num(status.observedGeneration)
end
if status == nil or (generation ~= nil and (observed == nil or observed < generation)) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for Kiln to observe generation " .. generation
  else
    hs.message = "Waiting for Kiln to observe the object"
  end
  return hs
end

-- 2. Expired and kept (MarkExpired): nothing is wrong, the job is just over
-- (its files and archive are gone).
local expired = condition("Expired")
if status.phase == "Expired" or isTrue(expired) then
  local fallback = "Expired"
  if status.expiresAt ~= nil then
    fallback = "Expired at " .. status.expiresAt
  end
  hs.status = "Suspended"
  hs.message = messageOf(expired, fallback)
  return hs
end

-- 3. The client gave up (spec.failure).
if status.phase == "Failed" then
  local message = status.message
  if (message == nil or message == "") and obj.spec ~= nil and obj.spec.failure ~= nil then
    message = obj.spec.failure.message
  end
  if message == nil or message == "" then
    message = describe(condition("Ready"), "Job failed")
  end
  hs.status = "Degraded"
  hs.message = "Failed: " .. message
  return hs
end

-- 4. Kiln cannot make progress without a change to the spec.
local stalled = condition("Stalled")
if isTrue(stalled) then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

-- 5. Ready.
local ready = condition("Ready")
if isTrue(ready) then
  local message = messageOf(ready, "Ready")
  local soon = condition("ExpiringSoon")
  if isTrue(soon) then
    local detail = messageOf(soon, nil)
    if detail == nil and status.expiresAt ~= nil then
      detail = "expires at " .. status.expiresAt
    end
    if detail ~= nil then
      message = message .. "; expiring soon: " .. detail
    else
      message = message .. "; expiring soon"
    end
  end
  hs.status = "Healthy"
  hs.message = message
  return hs
end

-- 6. Work in progress.
local reconciling = condition("Reconciling")
if isTrue(reconciling) then
  hs.status = "Progressing"
  hs.message = messageOf(reconciling, describe(reconciling, "Reconciling"))
  return hs
end

-- 7. Waiting for the client to write the files and set spec.complete.
if status.phase == "Generating" then
  local message = "Waiting for files / completion"
  local missing = 0
  if status.missingFiles ~= nil then
    missing = #status.missingFiles
  end
  if missing == 1 then
    message = message .. " (1 planned file missing)"
  elseif missing > 1 then
    message = message .. " (" .. missing .. " planned files missing)"
  end
  hs.status = "Progressing"
  hs.message = message
  return hs
end

-- 8. Not ready, for a reason Kiln reports.
if isFalse(ready) then
  hs.status = "Degraded"
  hs.message = describe(ready, "Not ready")
  return hs
end

-- 9. Ready=Unknown, or no phase yet.
hs.status = "Progressing"
hs.message = describe(ready, "Waiting for Kiln to report Ready")
return hs
