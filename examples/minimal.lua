-- minimal.lua - the smallest libldm host in Lua: load a checkpoint (or the built-in demo model),
-- generate one image, write it as PNG.
--     lua5.4 minimal.lua [MODEL.safetensors|demo] [PROMPT] [OUT.png]
-- Needs the module: LUA_CPATH="build/?.so;;" (make lua builds build/ldm.so).
local ldm = require "ldm"

local path, prompt, out = arg[1] or "demo", arg[2] or "a watercolor painting of a lighthouse", arg[3] or "minimal.png"
local demo = path == "demo"
local ok, err = pcall(function()
    local model <close> = demo and ldm.load_builtin("demo") or ldm.load(path)
    -- the demo model is class-conditional (ImageNet-style ids); real text models take the prompt
    local image = model:generate{prompt = prompt, class_label = demo and 979 or -1, steps = 20, seed = 42}
    ldm.write_png(out, image)
end)
if not ok then
    io.stderr:write("minimal: ", tostring(err), "\n")
    os.exit(1)
end
print(("minimal: libldm %s wrote %s"):format(ldm.version(), out))
