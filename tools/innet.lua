-- innet aggregation header: generated from innet.protocol.header.FIELDS
-- (python -c 'from innet.protocol.header import wireshark_lua; print(wireshark_lua())'); do not edit by hand.
local innet = Proto("innet", "innet aggregation")
local f = innet.fields
f.job = ProtoField.uint8("innet.job", "job", base.DEC)
f.worker = ProtoField.uint8("innet.worker", "worker", base.DEC)
f.step = ProtoField.uint32("innet.step", "step", base.DEC)
f.packet_id = ProtoField.uint32("innet.packet_id", "packet_id", base.DEC)
f.shadow = ProtoField.uint16("innet.shadow", "shadow", base.DEC, nil, 0x8000)
f.slot = ProtoField.uint16("innet.slot", "slot", base.DEC, nil, 0x7FFF)
f.flags = ProtoField.uint8("innet.flags", "flags", base.HEX)
f.flag_first = ProtoField.bool("innet.flags.first", "FIRST", 8, nil, 0x01)
f.flag_last = ProtoField.bool("innet.flags.last", "LAST", 8, nil, 0x02)
f.flag_retransmit = ProtoField.bool("innet.flags.retransmit", "RETRANSMIT", 8, nil, 0x04)
f.flag_result = ProtoField.bool("innet.flags.result", "RESULT", 8, nil, 0x08)
f.flag_overflow = ProtoField.bool("innet.flags.overflow", "OVERFLOW", 8, nil, 0x10)
f.flag_fallback = ProtoField.bool("innet.flags.fallback", "FALLBACK", 8, nil, 0x20)
f.flag_phase = ProtoField.bool("innet.flags.phase", "PHASE", 8, nil, 0x40)
f.flag_spare = ProtoField.bool("innet.flags.spare", "SPARE", 8, nil, 0x80)
f.exponent = ProtoField.int8("innet.exponent", "exponent", base.DEC)
f.count = ProtoField.uint16("innet.count", "count", base.DEC)
f.values = ProtoField.int32("innet.value", "value", base.DEC)
function innet.dissector(buf, pinfo, tree)
  if buf:len() < 16 then return 0 end
  pinfo.cols.protocol = "innet"
  local t = tree:add(innet, buf(), "innet aggregation")
  local o = 0
  t:add(f.job, buf(o, 1))
  o = o + 1
  t:add(f.worker, buf(o, 1))
  o = o + 1
  t:add(f.step, buf(o, 4))
  o = o + 4
  t:add(f.packet_id, buf(o, 4))
  o = o + 4
  t:add(f.shadow, buf(o, 2))
  t:add(f.slot, buf(o, 2))
  o = o + 2
  local ft = t:add(f.flags, buf(o, 1))
  ft:add(f.flag_first, buf(o, 1))
  ft:add(f.flag_last, buf(o, 1))
  ft:add(f.flag_retransmit, buf(o, 1))
  ft:add(f.flag_result, buf(o, 1))
  ft:add(f.flag_overflow, buf(o, 1))
  ft:add(f.flag_fallback, buf(o, 1))
  ft:add(f.flag_phase, buf(o, 1))
  ft:add(f.flag_spare, buf(o, 1))
  o = o + 1
  t:add(f.exponent, buf(o, 1))
  o = o + 1
  t:add(f.count, buf(o, 2))
  local count = buf(o, 2):uint()
  o = o + 2
  local vt = t:add(innet, buf(o), string.format("%d int32 values", count))
  for i = 0, count - 1 do
    if o + 4 > buf:len() then break end
    vt:add(f.values, buf(o, 4))
    o = o + 4
  end
  pinfo.cols.info = string.format("job %d worker %d step %d id %d", buf(0, 1):uint(), buf(1, 1):uint(), buf(2, 4):uint(), buf(6, 4):uint())
  return o
end
local udp = DissectorTable.get("udp.port")
for port = 0xBEE0, 0xBEEF do udp:add(port, innet) end
