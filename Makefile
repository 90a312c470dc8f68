# libldm - GNU Makefile. `make` builds the libraries and the tool, `make check` runs every test,
# `make run` draws "libldm" with the trained glyph model, `make install PREFIX=...` installs.
# Sources are discovered: every lib/*/*.c is part of the library, every tests/test_*.c is a Check
# suite, src/*.c is the `ldm` tool.

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DATADIR ?= $(PREFIX)/share

VERSION_MAJOR := 0
VERSION := 0.1.0
SONAME := libldm.so.$(VERSION_MAJOR)

# Cross builds (docs/arm64.md): CROSS is the tool prefix, e.g. `make CROSS=aarch64-linux-gnu-
# BUILD=build-arm64 check` (.ci/install-cross-deps.sh installs the compiler, qemu-user and the
# target's libraries). CC becomes $(CROSS)gcc unless CC is given; pkg-config reads only the
# target's multiarch .pc files; the tests run through LDM_RUN (qemu-user, by default
# qemu-$(arch)). Without CROSS nothing changes.
CROSS ?=
ifneq ($(CROSS),)
ifeq ($(origin CC),default)
CC := $(CROSS)gcc
endif
CROSS_TRIPLET := $(patsubst %-,%,$(CROSS))
CROSS_QEMU_ARCH := $(firstword $(subst -, ,$(CROSS_TRIPLET)))
# No -L /usr/$(CROSS_TRIPLET): the target's libraries are multiarch packages that bring the
# target's libc6 (its loader is /lib/ld-linux-aarch64.so.1); with -L the cross sysroot's ld.so
# would load that other libc.so.6 build, and thread creation and fork then spin forever.
LDM_RUN ?= qemu-$(CROSS_QEMU_ARCH)
# Debian's $(CROSS)pkg-config when installed, else pkg-config limited to the target's directories.
ifeq ($(origin PKG_CONFIG),undefined)
PKG_CONFIG := $(if $(shell command -v $(CROSS)pkg-config 2>/dev/null),$(CROSS)pkg-config,PKG_CONFIG_LIBDIR=/usr/lib/$(CROSS_TRIPLET)/pkgconfig:/usr/share/pkgconfig pkg-config)
endif
endif
PKG_CONFIG ?= pkg-config
LDM_RUN ?=
export LDM_RUN
# The target's Debian multiarch directory name (x86_64-linux-gnu, aarch64-linux-gnu, ...).
MULTIARCH := $(or $(shell $(CC) -print-multiarch 2>/dev/null),$(CROSS_TRIPLET),$(shell $(CC) -dumpmachine 2>/dev/null))

# BLAS back end: openblas (default) or blis.
comma := ,
BLAS ?= openblas
# BLIS: Debian installs each threading flavour in its own directory; we thread ourselves, so the
# serial one (libblis-serial-dev) is used when present, else whatever -lblis finds.
BLIS_DIR ?= /usr/lib/$(MULTIARCH)/blis-serial
BLIS_INC ?= /usr/include/$(MULTIARCH)/blis-serial
ifeq ($(BLAS),blis)
BLAS_CFLAGS := $(if $(wildcard $(BLIS_INC)/cblas.h),-isystem $(BLIS_INC)) -DLDM_BLAS_BLIS
BLAS_LIBS := $(if $(wildcard $(BLIS_DIR)/libblis.so),-L$(BLIS_DIR) -Wl$(comma)-rpath$(comma)$(BLIS_DIR)) -lblis
else
BLAS_CFLAGS := $(shell $(PKG_CONFIG) --cflags openblas 2>/dev/null)
BLAS_LIBS := $(shell $(PKG_CONFIG) --libs openblas 2>/dev/null || echo -lopenblas)
endif
# BLAS in the installed ldm.pc: OpenBLAS has a pkg-config file (`openblas`), so it goes in
# Requires.private and `pkg-config --static` follows it to OpenBLAS's own private libraries
# (gfortran, ...); BLIS (or an OpenBLAS without a .pc) goes in Libs.private instead.
ifeq ($(BLAS),blis)
PC_BLAS_REQUIRES :=
PC_BLAS_LIBS := $(BLAS_LIBS)
else
PC_BLAS_REQUIRES := $(shell $(PKG_CONFIG) --exists openblas 2>/dev/null && echo openblas)
PC_BLAS_LIBS := $(if $(PC_BLAS_REQUIRES),,-lopenblas)
endif

DEP_PKGS := libpng zlib yaml-0.1
DEP_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(DEP_PKGS) 2>/dev/null)
DEP_LIBS := $(shell $(PKG_CONFIG) --libs $(DEP_PKGS) 2>/dev/null || echo -lpng16 -lz -lyaml)
CHECK_CFLAGS := $(shell $(PKG_CONFIG) --cflags check 2>/dev/null)
CHECK_LIBS := $(shell $(PKG_CONFIG) --libs check 2>/dev/null || echo -lcheck -lsubunit -lrt -lm)

CC ?= cc
OPT ?= -O2
CFLAGS ?= $(OPT) -g
WARN := -Wall -Wextra -Werror -Wno-unused-parameter
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -fPIC -fvisibility=hidden -pthread $(WARN) -Iinclude $(BLAS_CFLAGS) $(DEP_CFLAGS) $(CFLAGS)
LIBS := $(BLAS_LIBS) $(DEP_LIBS) -lm -pthread

BUILD ?= build
LIB_SRC := $(sort $(wildcard lib/*/*.c))
LIB_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC))
TOOL_SRC := $(sort $(wildcard src/*.c))
TOOL_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(TOOL_SRC))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
TEST_SUPPORT_SRC := $(sort $(wildcard tests/support/*.c))
TEST_SUPPORT_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(TEST_SUPPORT_SRC))
CONFORMANCE := $(BUILD)/tests/conformance

STATIC_LIB := $(BUILD)/libldm.a
SHARED_LIB := $(BUILD)/libldm.so.$(VERSION)
TOOL := $(BUILD)/ldm

.PHONY: all check run install uninstall clean format tests deps do-check do-run bench
all: $(STATIC_LIB) $(SHARED_LIB) $(TOOL)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

# The trained built-in models are found in the installed data folder (lib/api/builtin_trained.c).
$(BUILD)/lib/api/builtin_trained.o: ALL_CFLAGS += -DLDM_DATADIR='"$(DATADIR)/libldm"'

$(STATIC_LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(SHARED_LIB): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--no-undefined $(ALL_CFLAGS) -o $@ $^ $(LIBS)
	ln -sf libldm.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/libldm.so

$(TOOL): $(TOOL_OBJ) $(STATIC_LIB)
	$(CC) $(ALL_CFLAGS) -o $@ $(TOOL_OBJ) $(STATIC_LIB) $(LIBS)

# Test support code reaches internal headers, like the tests.
$(BUILD)/tests/support/%.o: tests/support/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Ilib -MMD -MP -c $< -o $@

# Tests link the static library so they can reach internal functions (hidden symbols are still
# visible inside a static link).
$(BUILD)/tests/%: tests/%.c $(TEST_SUPPORT_OBJ) $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Ilib $(CHECK_CFLAGS) -o $@ $< $(TEST_SUPPORT_OBJ) $(STATIC_LIB) $(CHECK_LIBS) $(LIBS)

# GCC 12 for aarch64 (Debian 12's aarch64-linux-gnu-gcc 12.2) stops with an internal compiler error
# in the loop vectorizer (vect_transform_reduction) on some test programs' reduction loops
# (tests/test_kernels.c, tests/test_train_lora_roundtrip.c): the tests are compiled without loop
# vectorization there (private: the library objects they link are not).
ifneq ($(filter aarch64-%,$(MULTIARCH)),)
ifeq ($(shell $(CC) -dumpversion 2>/dev/null),12)
$(BUILD)/tests/%: private ALL_CFLAGS += -fno-tree-loop-vectorize
endif
endif

$(CONFORMANCE): tests/conformance.c $(TEST_SUPPORT_OBJ) $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Ilib -o $@ $< $(TEST_SUPPORT_OBJ) $(STATIC_LIB) $(LIBS)

tests: $(TEST_BIN) $(CONFORMANCE)

# Benchmarks live apart from the tests: `make bench` builds them, bench/README.md says how to run.
BENCH := $(BUILD)/bench/bench
$(BENCH): bench/bench.c $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Ilib -o $@ $< $(STATIC_LIB) $(LIBS)
LATENCY := $(BUILD)/bench/latency
$(LATENCY): bench/latency.c $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Ilib -o $@ $< $(STATIC_LIB) $(LIBS)
TAESD_BENCH := $(BUILD)/bench/taesd_bench
$(TAESD_BENCH): bench/taesd_bench.c $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Ilib -o $@ $< $(STATIC_LIB) $(LIBS)
# The machine's own FMA peak, the yardstick docs/performance.md states results against.
PEAK := $(BUILD)/bench/peak
$(PEAK): bench/peak.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< -pthread
bench: $(BENCH) $(LATENCY) $(PEAK) $(TAESD_BENCH)

# The glyph data set (docs/training-data.md). `make glyphs-data` installs FreeType and the fonts
# (.ci/install-glyph-deps.sh, as root), builds $(BUILD)/ldm-glyphs (src/glyphs/, the only user of
# FreeType: `all` and `check` never need it) and renders $(BUILD)/glyphs-data with a fixed recipe.
# $(BUILD)/ldm-glyph-judge (no FreeType) measures the test judge (tests/support/glyph_judge.c).
GLYPHS := $(BUILD)/ldm-glyphs
GLYPH_JUDGE := $(BUILD)/ldm-glyph-judge
FT_CFLAGS = $(shell $(PKG_CONFIG) --cflags freetype2)
FT_LIBS = $(shell $(PKG_CONFIG) --libs freetype2 2>/dev/null || echo -lfreetype)
$(GLYPHS): src/glyphs/render_glyphs.c $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Ilib $(FT_CFLAGS) -o $@ $< $(STATIC_LIB) $(FT_LIBS) $(LIBS)
$(GLYPH_JUDGE): src/glyphs/judge_eval.c $(BUILD)/tests/support/glyph_judge.o $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Ilib -Itests -o $@ $< $(BUILD)/tests/support/glyph_judge.o $(STATIC_LIB) $(LIBS)
glyphs-data:
	@sh .ci/install-glyph-deps.sh
	@$(MAKE) --no-print-directory do-glyphs-data
do-glyphs-data: $(GLYPHS) $(GLYPH_JUDGE)
	rm -rf $(BUILD)/glyphs-data
	$(GLYPHS) --fonts src/glyphs/fonts.txt --seed 1 --copies 2 --out $(BUILD)/glyphs-data
.PHONY: glyphs-data do-glyphs-data

# The shipped glyph model (examples/glyphs/README.md): the data set above, then `ldm train` for the
# autoencoder and the LDM with the recipe's fixed seeds and step counts, exported as float16 with its
# config. Results do not depend on the thread count, so this rebuilds the committed file exactly.
GLYPHS_AE_STEPS ?= 711
GLYPHS_LDM_STEPS ?= 8000
glyphs-model: glyphs-data
	@$(MAKE) --no-print-directory do-glyphs-model
do-glyphs-model: all
	./$(TOOL) train examples/glyphs/autoencoder.yaml --data $(BUILD)/glyphs-data --out $(BUILD)/glyphs-ae \
	    --seed 1 --steps $(GLYPHS_AE_STEPS)
	./$(TOOL) train examples/glyphs/ldm.yaml --data $(BUILD)/glyphs-data --out $(BUILD)/glyphs-ldm --seed 1 \
	    --first-stage $(BUILD)/glyphs-ae/last.safetensors --steps $(GLYPHS_LDM_STEPS) \
	    --export examples/glyphs/glyphs.safetensors --half
	cp $(BUILD)/glyphs-ldm/config.yaml examples/glyphs/glyphs.yaml
.PHONY: glyphs-model do-glyphs-model

# Lua 5.4 module (bindings/lua/README.md): $(BUILD)/ldm.so for `require "ldm"` through LUA_CPATH.
# It links the shared library, found next to the module ($ORIGIN, as in $(BUILD)), two levels up
# ($ORIGIN/../..: installed in $(LIBDIR)/lua/5.4, beside $(LIBDIR)/libldm.so.0), or on the loader's
# path.
LUA_CFLAGS := $(shell $(PKG_CONFIG) --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LUA_MODULE := $(BUILD)/ldm.so
LUA_SRC := $(sort $(wildcard bindings/lua/*.c))
$(LUA_MODULE): $(LUA_SRC) bindings/lua/lbind.h include/ldm.h $(SHARED_LIB)
	$(CC) $(ALL_CFLAGS) $(LUA_CFLAGS) -shared -o $@ $(LUA_SRC) -L$(BUILD) -lldm -Wl,-rpath,'$$ORIGIN:$$ORIGIN/../..'
lua: $(LUA_MODULE)
.PHONY: lua

# libFuzzer harnesses (docs/fuzzing.md): `make fuzz` builds every tests/fuzz/fuzz_*.c into
# $(BUILD)/fuzz with clang, ASan and UBSan; the library is compiled again for them (instrumented).
FUZZ_CC ?= clang
FUZZ_SAN ?= -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# No -Werror here: the gcc build enforces warnings; a clang-only warning must not stop fuzzing.
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -pthread $(filter-out -Werror,$(WARN)) -Iinclude -Ilib $(BLAS_CFLAGS) $(DEP_CFLAGS) -O1 -g $(FUZZ_SAN)
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))
FUZZ_LIB_OBJ := $(patsubst %.c,$(BUILD)/fuzz/obj/%.o,$(LIB_SRC))
$(BUILD)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@
$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/*.h $(FUZZ_LIB_OBJ)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_LIB_OBJ) $(LIBS)
fuzz: $(FUZZ_BIN)
.PHONY: fuzz

# The shared fixtures live beside the checkout (../shared); LDM_SHARED overrides.
LDM_SHARED ?= $(abspath ../shared)
export LDM_SHARED

# `make check` and `make run` are the README's two commands: they first install any missing
# Debian package (as root), then re-enter make so pkg-config sees what was just installed.
deps:
	@sh .ci/install-deps.sh
ifneq ($(CROSS),)
	@sh .ci/install-cross-deps.sh
endif

check: deps
	@$(MAKE) --no-print-directory do-check

run: deps
	@$(MAKE) --no-print-directory do-run

# A cross build runs the tests through $(LDM_RUN) and has no target Lua to load a Lua module into,
# so it builds none (tests/run-all.sh says what it skips and why).
do-check: all tests $(if $(CROSS),,lua)
	@LDM_BUILD=$(BUILD) LDM_CROSS=$(CROSS) sh tests/run-all.sh $(TEST_BIN)

# The word "libldm" drawn by the trained built-in glyph model (classes l i b l d m), one PNG.
do-run: all
	./$(TOOL) generate --class 37,34,27,37,29,38 --seed 1 -o libldm.png

# `make install` also builds and installs the Lua module when Lua 5.4's headers are there (else it
# says so and goes on). Its directory, LUA_CMODDIR, is where Lua 5.4 looks for C modules under the
# prefix: Debian's lua5.4 searches /usr/local/lib/lua/5.4 and /usr/lib/lua/5.4, while pkg-config's
# INSTALL_CMOD moved to another prefix (/usr/local/lib/x86_64-linux-gnu/lua/5.4) is not searched.
LUA_CMODDIR ?= $(LIBDIR)/lua/5.4
LUA_FOUND := $(shell $(CC) $(LUA_CFLAGS) -dM -E -include lua.h -x c /dev/null 2>/dev/null | grep -q 'define LUA_VERSION_NUM  *504' && echo yes)

install: all $(if $(LUA_FOUND),lua)
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 644 include/ldm.h $(DESTDIR)$(INCLUDEDIR)/ldm.h
	install -m 644 $(STATIC_LIB) $(DESTDIR)$(LIBDIR)/libldm.a
	install -m 755 $(SHARED_LIB) $(DESTDIR)$(LIBDIR)/libldm.so.$(VERSION)
	ln -sf libldm.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libldm.so
	install -m 755 $(TOOL) $(DESTDIR)$(BINDIR)/ldm
	install -d $(DESTDIR)$(DATADIR)/libldm
	install -m 644 examples/glyphs/glyphs.safetensors examples/glyphs/glyphs.yaml $(DESTDIR)$(DATADIR)/libldm/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
	    -e 's|@VERSION@|$(VERSION)|g' -e 's|@BLAS_LIBS@|$(PC_BLAS_LIBS)|g' \
	    -e 's|@BLAS_REQUIRES@|$(PC_BLAS_REQUIRES)|g' pkgconfig/ldm.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/ldm.pc
ifneq ($(LUA_FOUND),)
	install -d $(DESTDIR)$(LUA_CMODDIR)
	install -m 755 $(LUA_MODULE) $(DESTDIR)$(LUA_CMODDIR)/ldm.so
else
	@echo "install: Lua 5.4 headers not found (LUA_CFLAGS: $(LUA_CFLAGS)): the Lua module is not installed"
endif

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/ldm.h $(DESTDIR)$(LIBDIR)/libldm.a $(DESTDIR)$(LIBDIR)/libldm.so* \
	      $(DESTDIR)$(BINDIR)/ldm $(DESTDIR)$(PKGCONFIGDIR)/ldm.pc $(DESTDIR)$(LUA_CMODDIR)/ldm.so
	rm -f $(DESTDIR)$(DATADIR)/libldm/glyphs.safetensors $(DESTDIR)$(DATADIR)/libldm/glyphs.yaml

format:
	clang-format -i include/*.h lib/*/*.[ch] src/*.c tests/*.c

clean:
	rm -rf $(BUILD) demo.png

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
