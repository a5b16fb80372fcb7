/*
 * mhd_notls.c - the GnuTLS functions Debian's libmicrohttpd.a refers to, as
 * stubs, for the -static txt2img executables (only those: the dynamic
 * builds, SAN=1, link libmicrohttpd.so and its own libgnutls).
 *
 * Debian builds libmicrohttpd with HTTPS support, so its static archive
 * refers to GnuTLS; GnuTLS links statically only with p11-kit, which Debian
 * ships as a shared library alone (no libp11-kit.a). The server never asks
 * libmicrohttpd for TLS (no MHD_USE_TLS: plain HTTP behind a TLS-terminating
 * proxy if needed, docs/server.md), so the TLS code paths never run; the
 * stubs make them fail cleanly should that ever change. gnutls_global_init,
 * which libmicrohttpd calls when it starts, succeeds and does nothing.
 */
#include <stddef.h>
#include <sys/types.h>

#define GNUTLS_E_UNIMPLEMENTED_FEATURE (-1250)

int gnutls_global_init(void);
void gnutls_global_deinit(void);
int gnutls_global_init(void) { return 0; }
void gnutls_global_deinit(void) {}

/* gnutls_malloc is a variable (a function pointer) in GnuTLS */
void *(*gnutls_malloc)(size_t);
void *(*gnutls_malloc)(size_t) = NULL;

#define FAIL_INT(name) \
    int name(void);    \
    int name(void) { return GNUTLS_E_UNIMPLEMENTED_FEATURE; }
#define NOTHING(name) \
    void name(void);  \
    void name(void) {}

FAIL_INT(gnutls_alpn_set_protocols)
FAIL_INT(gnutls_bye)
FAIL_INT(gnutls_certificate_allocate_credentials)
FAIL_INT(gnutls_certificate_set_x509_key_mem)
FAIL_INT(gnutls_certificate_set_x509_key_mem2)
FAIL_INT(gnutls_certificate_set_x509_trust_mem)
FAIL_INT(gnutls_credentials_set)
FAIL_INT(gnutls_dh_params_import_pkcs3)
FAIL_INT(gnutls_dh_params_init)
FAIL_INT(gnutls_handshake)
FAIL_INT(gnutls_init)
FAIL_INT(gnutls_priority_init)
FAIL_INT(gnutls_priority_set)
FAIL_INT(gnutls_psk_allocate_server_credentials)
FAIL_INT(gnutls_record_get_direction)
NOTHING(gnutls_certificate_free_credentials)
NOTHING(gnutls_certificate_server_set_request)
NOTHING(gnutls_certificate_set_dh_params)
NOTHING(gnutls_certificate_set_retrieve_function2)
NOTHING(gnutls_certificate_set_retrieve_function3)
NOTHING(gnutls_deinit)
NOTHING(gnutls_dh_params_deinit)
NOTHING(gnutls_priority_deinit)
NOTHING(gnutls_psk_free_server_credentials)
NOTHING(gnutls_psk_set_server_credentials_function)
NOTHING(gnutls_session_set_ptr)
NOTHING(gnutls_transport_set_int2)

int gnutls_cipher_get(void);
int gnutls_cipher_get(void) { return 0; }
int gnutls_protocol_get_version(void);
int gnutls_protocol_get_version(void) { return 0; }
size_t gnutls_record_check_pending(void);
size_t gnutls_record_check_pending(void) { return 0; }
ssize_t gnutls_record_recv(void);
ssize_t gnutls_record_recv(void) { return GNUTLS_E_UNIMPLEMENTED_FEATURE; }
ssize_t gnutls_record_send(void);
ssize_t gnutls_record_send(void) { return GNUTLS_E_UNIMPLEMENTED_FEATURE; }
void *gnutls_session_get_ptr(void);
void *gnutls_session_get_ptr(void) { return NULL; }
const char *gnutls_strerror(int e);
const char *gnutls_strerror(int e) { (void)e; return "TLS is not built into this executable"; }
