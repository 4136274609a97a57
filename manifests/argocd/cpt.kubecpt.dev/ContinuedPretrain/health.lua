-- Argo CD health of a ContinuedPretrain, from its conditions and observedGeneration.
-- Runs without the string and math libraries (Argo CD's default for resource overrides).
-- Degraded: the run failed, or it cannot go on (Stalled, e.g. a missing Secret). Healthy: every stage completed.
-- Suspended: spec.suspend, or Kueue holding it in its queue (as Argo CD shows a Job Kueue keeps suspended). Progressing: everything else, a multi-day run included.
local function conditions()
  local found = {}
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, condition in ipairs(obj.status.conditions) do
      found[condition.type] = condition
    end
  end
  return found
end

local function message(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return fallback
end

if obj.status == nil then
  return {status = "Progressing", message = "Waiting for the operator to accept the run"}
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  return {status = "Progressing", message = "Waiting for the operator to observe generation " .. generation}
end

local c = conditions()
local function holds(kind)
  return c[kind] ~= nil and c[kind].status == "True"
end

if holds("Failed") then
  return {status = "Degraded", message = message(c["Failed"], "The run failed")}
end
if holds("Complete") then
  return {status = "Healthy", message = message(c["Ready"], "Every stage completed")}
end
if holds("Stalled") then
  return {status = "Degraded", message = message(c["Stalled"], "The run cannot go on")}
end
if holds("Suspended") then
  return {status = "Suspended", message = message(c["Suspended"], "The run is suspended")}
end
if holds("Queued") then
  return {status = "Suspended", message = message(c["Queued"], "The run waits in its queue")}
end
local progress = message(c["Reconciling"], "The run is in progress")
local training = obj.status.training
if training ~= nil and training.step ~= nil then
  progress = progress .. " (step " .. training.step .. ")"
end
return {status = "Progressing", message = progress}
