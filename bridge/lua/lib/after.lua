-- after(a, b): whether stream id ``a`` comes after ``b`` (every id comes after none: ``b`` nil).
local function after(a, b)
  if not b then return true end
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  if tonumber(ams) ~= tonumber(bms) then return tonumber(ams) > tonumber(bms) end
  return tonumber(aseq) > tonumber(bseq)
end
