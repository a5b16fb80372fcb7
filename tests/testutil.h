/* testutil.h - helpers shared by the Check tests. */
#ifndef LDM_TESTUTIL_H
#define LDM_TESTUTIL_H

#include <stdlib.h>

/* Directory of the shared goldens and vocabulary (env LDM_SHARED, default "../shared"). */
static inline const char *test_shared_dir(void) {
    const char *s = getenv("LDM_SHARED");
    return s && *s ? s : "../shared";
}
/* Build directory holding ldmc and the tools (env LDM_BUILD, default "build"). */
static inline const char *test_build_dir(void) {
    const char *s = getenv("LDM_BUILD");
    return s && *s ? s : "build";
}

#endif
