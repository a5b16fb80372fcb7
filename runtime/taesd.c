/*
 * taesd.c - TAESD weight names (see taesd.h).
 */
#include "taesd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* "<i>.<rest>" -> "<prefix><i + shift>.<rest>"; a name not of that form is
 * kept (and then reported missing under its own name). */
static const char *shifted(const char *name, const char *prefix, int shift, char *buf, size_t size) {
    char *end;
    long i = strtol(name, &end, 10);
    if (end == name || *end != '.' || i + shift < 0) return name;
    snprintf(buf, size, "%s%ld%s", prefix, i + shift, end);
    return buf;
}

const char *ldm_taesd_decoder_diffusers_key(const char *name, char *buf, size_t size) {
    return shifted(name, "decoder.layers.", -1, buf, size);
}

const char *ldm_taesd_encoder_diffusers_key(const char *name, char *buf, size_t size) {
    return shifted(name, "encoder.layers.", 0, buf, size);
}

int ldm_taesd_key_map(const StFile *f, const LdmModel *m, int decoder, LdmKeyMapFn *map) {
    *map = NULL;
    if (m->n_weights < 1) return ldm_fail("internal: %s has no weights", m->name);
    const char *first = m->weights[0].name;
    LdmKeyMapFn dmap = decoder ? ldm_taesd_decoder_diffusers_key : ldm_taesd_encoder_diffusers_key;
    char buf[256];
    const char *dname = dmap(first, buf, sizeof buf);
    if (st_find(f, first)) return 0;
    if (st_find(f, dname)) {
        *map = dmap;
        return 0;
    }
    return ldm_fail("not a TAESD %s: it has neither '%s' (the names of the released taesd_%s.safetensors) nor "
                    "'%s' (diffusers AutoencoderTiny)", decoder ? "decoder" : "encoder", first,
                    decoder ? "decoder" : "encoder", dname);
}

int ldm_taesd_nets_load(LdmNets *s, const char *flag, const char *path, const LdmModel *const *models, int n,
                        int decoder) {
    memset(s, 0, sizeof *s);
    if (n < 1) return ldm_fail("internal: no TAESD models");
    StFile f;
    if (st_open(&f, path) != 0) return ldm_fail("%s %s", flag, ldm_last_error());
    LdmKeyMapFn map;
    int rc = ldm_taesd_key_map(&f, models[0], decoder, &map);
    st_close(&f);
    if (rc != 0) return ldm_fail("%s %s: %s", flag, path, ldm_last_error());
    LdmKeyMapFn *maps = ldm_xcalloc((size_t)n, sizeof *maps);
    for (int i = 0; i < n; i++) maps[i] = map;
    char what[96];
    snprintf(what, sizeof what, "a TAESD %s (madebyollin/taesd, SD1/SD2: 4 latent channels)",
             decoder ? "decoder" : "encoder");
    rc = ldm_nets_load_mapped(s, path, models, maps, n, what);
    free(maps);
    if (rc != 0) return ldm_fail("%s %s", flag, ldm_last_error());
    return 0;
}
