/**
 * Test helper: a self-signed TLS certificate for 127.0.0.1 and localhost,
 * made with `openssl` in a temporary folder. It is an end-entity certificate
 * (`CA:FALSE`): rustls, under Deno's TLS, refuses a certificate marked as a
 * CA when it is the server's own (`CaUsedAsEndEntity`), and `openssl req
 * -x509` marks one as a CA unless told otherwise.
 *
 * @module
 */

/** A certificate and its key, as files and as PEM text. */
export interface TestCert {
  /** Path of the PEM certificate. */
  certFile: string;
  /** Path of the PEM private key. */
  keyFile: string;
  /** The certificate, PEM. */
  cert: string;
  /** The private key, PEM. */
  key: string;
}

/** Makes a self-signed certificate named `name` under `dir`. */
export async function selfSignedCert(dir: string, name: string): Promise<TestCert> {
  const certFile = `${dir}/${name}.crt`;
  const keyFile = `${dir}/${name}.key`;
  const out = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-keyout",
      keyFile,
      "-out",
      certFile,
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`openssl failed: ${new TextDecoder().decode(out.stderr).slice(0, 300)}`);
  }
  return {
    certFile,
    keyFile,
    cert: await Deno.readTextFile(certFile),
    key: await Deno.readTextFile(keyFile),
  };
}
