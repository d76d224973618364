/*
 * IcebergRest: a throwaway Apache Iceberg REST catalog for pg_sink's tests. It is
 * Iceberg's own REST catalog test server, org.apache.iceberg.rest.RESTCatalogServer
 * (iceberg-open-api's test fixtures): the same backing catalog, made by the same
 * code from the same configuration, behind the same servlet (RESTCatalogServlet
 * over RESTServerCatalogAdapter, with gzip), but listening on one address only
 * (127.0.0.1 by default) and without SO_REUSEPORT. RESTCatalogServer itself binds
 * every interface, with SO_REUSEPORT, so a second server on the same port would
 * start beside the first one instead of failing.
 *
 *   scripts/iceberg_rest.sh start     (runs: java pgsink.tools.IcebergRest OPTIONS)
 *
 * The REST API is at the root: http://HOST:PORT/v1/config, /v1/namespaces, ...
 * (no prefix). The configuration is RESTCatalogServer's: catalog properties come
 * from environment variables CATALOG_* (the rest of the name lower-cased, "__"
 * becoming "-" and "_" becoming ".": CATALOG_WAREHOUSE is warehouse,
 * CATALOG_IO__IMPL io-impl, CATALOG_REST_PORT rest.port), overridden by options:
 *
 *   --host=ADDR     the address to listen on (default 127.0.0.1)
 *   --KEY=VALUE     catalog property KEY, e.g. --rest.port=19500 (default 8181),
 *                   --warehouse=file:///tmp/w (default: a new temporary
 *                   directory), --uri=jdbc:sqlite:/tmp/catalog.db (default
 *                   jdbc:sqlite::memory:), --catalog-impl=... (default
 *                   org.apache.iceberg.jdbc.JdbcCatalog), --io-impl=... (the
 *                   JdbcCatalog's default: org.apache.iceberg.hadoop.HadoopFileIO),
 *                   --jdbc.schema-version=V1 (the default; V1 has views), --clients=N
 *                   (JDBC connections, default 2)
 *
 * It runs until SIGTERM or SIGINT, then stops the HTTP server (exit status 143 or
 * 130); status 1 if it did not start, 2 for bad arguments.
 */
package pgsink.tools;

import java.lang.reflect.Constructor;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.util.HashMap;
import java.util.Map;
import org.apache.iceberg.rest.RESTCatalogAdapter;
import org.apache.iceberg.rest.RESTCatalogServer;
import org.apache.iceberg.rest.RESTCatalogServlet;
import org.apache.iceberg.util.PropertyUtil;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.server.handler.gzip.GzipHandler;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;

public final class IcebergRest {
  private IcebergRest() {}

  public static void main(String[] args) throws Exception {
    String host = "127.0.0.1";
    Map<String, String> config = new HashMap<>();
    for (String arg : args) {
      int eq = arg.indexOf('=');
      if (!arg.startsWith("--") || eq < 3) {
        System.err.println("IcebergRest: bad option " + arg
            + " (usage: [--host=ADDR] [--CATALOG.PROPERTY=VALUE]...)");
        System.exit(2);
      }
      String key = arg.substring(2, eq);
      String value = arg.substring(eq + 1);
      if (key.equals("host")) {
        host = value;
      } else {
        config.put(key, value);
      }
    }

    // RESTCatalogServer's constructor, its initializeBackendCatalog() (which reads
    // the CATALOG_* environment, applies the defaults and builds the catalog),
    // its CatalogContext and RESTServerCatalogAdapter are not public.
    Object context;
    Map<String, String> properties;
    RESTCatalogAdapter adapter;
    try {
      Constructor<RESTCatalogServer> serverCtor = RESTCatalogServer.class.getDeclaredConstructor(Map.class);
      serverCtor.setAccessible(true);
      RESTCatalogServer server = serverCtor.newInstance(config);
      Method init = RESTCatalogServer.class.getDeclaredMethod("initializeBackendCatalog");
      init.setAccessible(true);
      context = init.invoke(server);
      Method configuration = context.getClass().getDeclaredMethod("configuration");
      configuration.setAccessible(true);
      @SuppressWarnings("unchecked")
      Map<String, String> props = (Map<String, String>) configuration.invoke(context);
      properties = props;
      Class<?> adapterClass = Class.forName("org.apache.iceberg.rest.RESTServerCatalogAdapter");
      Constructor<?> adapterCtor = adapterClass.getDeclaredConstructor(context.getClass());
      adapterCtor.setAccessible(true);
      adapter = (RESTCatalogAdapter) adapterCtor.newInstance(context);
    } catch (InvocationTargetException e) {
      throw e.getCause() instanceof Exception ? (Exception) e.getCause() : e;
    }

    ServletContextHandler handler = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    handler.addServlet(new ServletHolder(new RESTCatalogServlet(adapter)), "/*");
    handler.insertHandler(new GzipHandler());

    Server http = new Server();
    ServerConnector connector = new ServerConnector(http);
    connector.setHost(host);
    connector.setPort(PropertyUtil.propertyAsInt(properties, RESTCatalogServer.REST_PORT, 8181));
    http.addConnector(connector);
    http.setHandler(handler);
    http.setStopAtShutdown(true);
    try {
      http.start();
    } catch (Exception e) {
      System.err.println("IcebergRest: cannot listen on " + host + ":" + connector.getPort() + ": " + e);
      System.exit(1);
    }
    System.err.println("IcebergRest: Iceberg REST catalog at http://" + host + ":" + connector.getLocalPort()
        + "/v1, warehouse " + properties.get("warehouse") + ", catalog " + properties.get("uri"));
    http.join();
  }
}
